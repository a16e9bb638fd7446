"""Small profiles written out by hand, for tests whose every figure is worked out by hand."""

from __future__ import annotations

from vpipe.planner.schema import PlanSettings
from vpipe.profiler.schema import NodeProfile, Profile, TensorMeta


def node(
    name, inputs, out, params=0, saved=0, kept=(), saves_output=False, fwd=1.0, grads=0, dense=True
) -> NodeProfile:
    """A node of one float32 output of `out` bytes (none when `out` is 0: a value that is not a
    tensor), `fwd` ms forward and twice that backward."""
    return NodeProfile(
        name=name,
        op="placeholder" if not inputs else "call_module",
        target="T",
        inputs=inputs,
        outputs=(TensorMeta((out // 4,), "float32", dense),) if out else (),
        forward_ms=fwd,
        backward_ms=2 * fwd,
        param_bytes=params,
        grad_bytes=params,
        buffer_bytes=0,
        output_bytes=out,
        saved_bytes=saved,
        saved_inputs=kept,
        saves_output=saves_output,
        backward_bytes=grads,
    )


def profile(outputs: tuple[str, ...], nodes: tuple[NodeProfile, ...], optimizer="sgd") -> Profile:
    return Profile(
        source="hand",
        source_kind="model",
        device="cpu",
        dtype="float32",
        batch_size=1,
        optimizer=optimizer,
        outputs=outputs,
        nodes=nodes,
    )


# A 3-stage example whose every memory figure is worked out by hand (asp, Adam, S = 3):
# test_costmodel works it out, test_ties adds a tie to it
PROFILE = profile(
    ("n5",),
    optimizer="adam",
    nodes=(
        node("n0", (), 100),
        # a linear: keeps its input; its backward holds 300 B at its peak
        node("n1", ("n0",), 200, params=1000, kept=("n0",), grads=300),
        node("n2", ("n1",), 200, saves_output=True, grads=400),  # a relu: keeps its output
        # its output is strided (a transpose, say): sending it copies it
        node("n3", ("n2",), 50, params=400, kept=("n2",), grads=100, dense=False),
        node("n4", ("n3",), 50, saved=30, kept=("n3",)),  # keeps its input and 30 B of its own
        node("n5", ("n4",), 10, params=200, kept=("n4",), grads=20),
    ),
)
SETTINGS = PlanSettings(
    gpus=3, memory_bytes=float("inf"), bandwidth_gbps=float("inf"), optimizer="adam"
)


def chain_profile(*fwd: float) -> Profile:
    """A chain n0 -> n1 -> ...: n0 the input (no work), then a node of `fwd` ms forward (3 x
    `fwd` of work) per argument, the last one the model's output."""
    nodes = [node("n0", (), 4)]
    nodes += [node(f"n{i}", (f"n{i - 1}",), 4, fwd=f) for i, f in enumerate(fwd, start=1)]
    return profile((nodes[-1].name,), tuple(nodes))
