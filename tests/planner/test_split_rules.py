"""`vpipe-plan --split uniform|parameter-balanced` writes the split the plan's baselines cost,
and the generated stages of such a split still compute the model."""

import pytest
import torch

from vpipe.common.modelfile import load_model_file
from vpipe.planner.baselines import BASELINE_SPLITS
from vpipe.planner.cli import main as plan_main
from vpipe.planner.schema import load_plan

from ..codegen.pipelines import forward_in_order, generate, load_all, plan, profile


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt")
    return directory, profile("gpt", directory)


@pytest.mark.parametrize("rule", BASELINE_SPLITS)
def test_rule_plans_are_the_costed_baselines(gpt, rule, tmp_path):
    _, profiled = gpt
    best = load_plan(plan(profiled, 4, tmp_path, False))
    ruled_path = tmp_path / f"{rule}.yaml"
    argv = [str(profiled), "--gpus", "4", "--split", rule, "-o", str(ruled_path), "-q"]
    assert plan_main(argv) == 0
    ruled = load_plan(ruled_path)
    baseline = next(b for b in best.baselines if b.name == rule)
    assert tuple(len(s.nodes) for s in ruled.stages) == baseline.stage_sizes
    assert not any(s.recompute for s in ruled.stages)
    assert ruled.predicted.time_per_minibatch_ms == pytest.approx(baseline.time_per_minibatch_ms)
    assert best.predicted.time_per_minibatch_ms <= ruled.predicted.time_per_minibatch_ms

    pipeline, stages = load_all(generate(ruled_path, tmp_path / "out"))
    model_file = load_model_file(pipeline.model)
    torch.manual_seed(pipeline.seed)
    batch = model_file.batch(pipeline.batch_size, 0)
    expected = batch.call(model_file.build_model())
    assert torch.equal(forward_in_order(pipeline, stages, batch)[0], expected)
