"""codegen/render.py: a stage's lines and checkpoint segments, written out by hand for a small
traced module, and the rendered file run against the module it came from."""

import torch
from torch import fx, nn

from vpipe.codegen.partition import StageFlow
from vpipe.codegen.render import Segment, render_stage, stage_text


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        a = self.fc(x)
        b = torch.relu(a)
        c = a + b
        return c * 2


# one stage of the whole graph, fx's names, relu and add recomputed in backward
FLOW = StageFlow(
    index=0,
    nodes=("x", "fc", "relu", "add", "mul"),
    batch_inputs=("x",),
    received=(),
    sent=("mul",),
    segments=(("relu", "add"),),
)


def test_forward_lines_and_segment_by_hand():
    """fx's line per op, its frees as `del`; the recomputed run becomes a method that takes
    what it reads from before it (fc) and returns what is read after it (add)."""
    text = stage_text(fx.symbolic_trace(Net()), FLOW, stages=1, owns=("fc",))
    assert text.body == (
        "fc = self.fc(x)",
        "del x",
        "add, = checkpoint(self._recompute_0, fc, use_reentrant=False)",
        "mul = add * 2",
        "del add",
    )
    assert text.segments == (
        Segment(
            method="_recompute_0",
            args=("fc",),
            returns=("add",),
            body=("relu = torch.relu(fc)", "add = fc + relu", "del fc, relu"),
        ),
    )
    assert text.imports == (
        "import torch",
        "from torch import nn",
        "from torch.utils.checkpoint import checkpoint",
        "from vpipe.common.stages import adopt",
    )
    assert (text.stdlib_imports, text.inputs, text.outputs, text.node_count) == (
        (),
        ("x",),
        ("mul",),
        5,
    )


def test_without_recompute_there_is_no_checkpoint():
    flow = StageFlow(0, FLOW.nodes, ("x",), (), ("mul",), ())
    text = stage_text(fx.symbolic_trace(Net()), flow, stages=1, owns=("fc",))
    assert text.segments == ()
    assert "from torch.utils.checkpoint import checkpoint" not in text.imports
    assert text.body == (
        "fc = self.fc(x)",
        "del x",
        "relu = torch.relu(fc)",
        "add = fc + relu",
        "del fc, relu",
        "mul = add * 2",
        "del add",
    )


def test_the_rendered_stage_computes_what_the_module_does():
    """The file as vpipe-gen writes it, executed: the same output and the same gradients as
    the module, through the checkpointed segment."""
    text = stage_text(fx.symbolic_trace(Net()), FLOW, stages=1, owns=("fc",))
    source = render_stage(text, {"plan": "plan.yaml", "plan_sha256": "0" * 64, "model": "net"})
    namespace: dict = {}
    exec(compile(source, "stage_0.py", "exec"), namespace)
    torch.manual_seed(0)
    model, x = Net(), torch.randn(3, 4)
    stage = namespace["Stage0"](model)
    (out,) = stage(x)
    expected = model(x)
    assert torch.equal(out, expected)
    grad = torch.autograd.grad(out.sum(), model.fc.weight)[0]
    assert torch.equal(grad, torch.autograd.grad(expected.sum(), model.fc.weight)[0])
