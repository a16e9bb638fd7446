"""A stage holds only its own weights, and a checkpoint segment saves what the planner says."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vpipe.codegen.schema import load_pipeline
from vpipe.common.modelfile import load_model_file
from vpipe.common.stages import load_stage
from vpipe.planner.cli import main as plan_main
from vpipe.planner.costmodel import kept_bytes
from vpipe.planner.graph import plan_graph
from vpipe.planner.schema import load_plan
from vpipe.profiler.schema import load_profile

from .pipelines import generate, plan, profile


class _Allocations(TorchDispatchMode):
    """Bytes of every tensor an op creates off the meta device."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._schema.name.startswith("aten::empty") and out.device.type != "meta":
            self.bytes += out.untyped_storage().nbytes()
        return out


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt")
    profile_path = profile("gpt", directory)
    plan_path = plan(profile_path, 3, directory, recompute=True)
    return profile_path, plan_path, generate(plan_path, directory / "out")


@pytest.mark.parametrize("index", [0, 1, 2])
def test_building_a_stage_allocates_only_its_parameters(gpt, index):
    _, _, out = gpt
    pipeline = load_pipeline(out / "pipeline.yaml")
    with _Allocations() as allocations:
        stage = load_stage(
            out, pipeline.stages[index].module, pipeline.stages[index].weights, pipeline.model
        )
    own = sum(t.untyped_storage().nbytes() for t in [*stage.parameters(), *stage.buffers()])
    whole = sum(
        p.numel() * p.element_size()
        for p in load_model_file(pipeline.model).build_model().parameters()
    )
    assert allocations.bytes == own
    assert own < whole
    assert {name for name, _ in stage.named_parameters()} == set(pipeline.stages[index].parameters)


def _example(shape, dtype):
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=dtype, requires_grad=True)
    return torch.zeros(shape, dtype=dtype)


def _saved_bytes(stage, inputs) -> int:
    """Bytes autograd keeps for backward, by storage, leaving out the weights. (The inputs here
    are model inputs, nodes of the stage: the planner counts them when they are kept.)"""
    excluded = {t.untyped_storage().data_ptr() for t in stage.parameters()}
    storages = {}

    def pack(tensor):
        key = tensor.untyped_storage().data_ptr()
        if key not in excluded:
            storages[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stage(*inputs)
    return sum(storages.values())


def test_checkpoint_saves_what_the_planner_counts(tmp_path):
    """One stage, so both plans hold the same nodes; 80% of its memory forces the planner to
    recompute."""
    profile_path = profile("gpt", tmp_path)
    free_plan = plan(profile_path, 1, tmp_path, recompute=False)
    need = load_plan(free_plan).stages[0].predicted.memory.total
    capped_plan = tmp_path / "capped.yaml"
    cap_gib = need * 0.8 / 2**30 / 0.9  # before the 10% headroom
    assert (
        plan_main(
            [
                str(profile_path),
                "--gpus",
                "1",
                "--memory",
                str(cap_gib),
                "-o",
                str(capped_plan),
                "-q",
            ]
        )
        == 0
    )
    stage_plan = load_plan(capped_plan).stages[0]
    assert stage_plan.recompute
    graph = plan_graph(load_profile(profile_path))
    index = {name: i for i, name in enumerate(graph.names)}
    nodes = [index[n] for n in stage_plan.nodes]
    recomputed = [index[n] for n in stage_plan.recompute]
    measured = {}
    for name, plan_path in (("plain", free_plan), ("checkpointed", capped_plan)):
        out = generate(plan_path, tmp_path / name)
        pipeline = load_pipeline(out / "pipeline.yaml")
        stage = load_stage(
            out, pipeline.stages[0].module, pipeline.stages[0].weights, pipeline.model
        )
        inputs = [_example(s.shape, getattr(torch, s.dtype)) for s in pipeline.stages[0].inputs]
        measured[name] = _saved_bytes(stage, inputs)
    assert measured["checkpointed"] < measured["plain"]
    assert measured["checkpointed"] == kept_bytes(graph, nodes, recomputed)[0]
    assert measured["plain"] == kept_bytes(graph, nodes, ())[0]
