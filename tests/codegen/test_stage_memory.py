"""A stage holds only its own weights, and a checkpoint segment saves what the planner says."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vpipe.codegen.loading import load_stage
from vpipe.codegen.schema import load_pipeline
from vpipe.common.modelfile import load_model_file
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
        stage = load_stage(out, pipeline, index)
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
    """Bytes autograd keeps for backward, by storage, leaving out weights and the inputs."""
    excluded = {t.untyped_storage().data_ptr() for t in [*stage.parameters(), *inputs]}
    storages = {}

    def pack(tensor):
        key = tensor.untyped_storage().data_ptr()
        if key not in excluded:
            storages[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stage(*inputs)
    return sum(storages.values())


def test_checkpoint_saves_what_the_planner_counts(gpt, tmp_path):
    profile_path, plan_path, out = gpt
    pipeline = load_pipeline(out / "pipeline.yaml")
    plain = generate(plan(profile_path, 3, tmp_path, recompute=False), tmp_path / "plain")
    graph = plan_graph(load_profile(profile_path))
    index = {name: i for i, name in enumerate(graph.names)}
    stage_plan = max(load_plan(plan_path).stages, key=lambda s: len(s.nodes))  # the largest
    k = stage_plan.index
    nodes = [index[n] for n in stage_plan.nodes]
    recomputed = [index[n] for n in stage_plan.recompute]
    inputs = [
        _example(spec.shape, getattr(torch, spec.dtype)) for spec in pipeline.stages[k].inputs
    ]
    with_checkpoint = _saved_bytes(load_stage(out, pipeline, k), inputs)
    without = _saved_bytes(load_stage(plain, load_pipeline(plain / "pipeline.yaml"), k), inputs)
    assert with_checkpoint < without
    assert with_checkpoint == kept_bytes(graph, nodes, recomputed)[0]
    assert without == kept_bytes(graph, nodes, ())[0]
