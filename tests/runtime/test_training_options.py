"""What a transformer user trains with, on real gloo processes against one process: AdamW with
a warm-up and a linear or cosine decay (torch.optim.AdamW with LambdaLR), global-norm clipping
(clip_grad_norm_), and the learning-rate factors against transformers' formulas."""

import math

import pytest
import torch

from vpipe.codegen.schema import load_pipeline
from vpipe.runtime.cli import main as train_main
from vpipe.runtime.lr_schedule import LrSchedule

from ..codegen.pipelines import generate, plan, profile
from .references import single_process

MICROBATCHES = 3
STEPS = 6
WARMUP = 2
LR = 0.01
MIN_LR = 0.002


# transformers' lambdas (optimization.py), written out: constant, linear and cosine with warm-up;
# a floor as get_cosine_with_min_lr_schedule_with_warmup adds one (its min_lr_rate), which
# transformers' linear schedule lacks (floor 0 there is exactly transformers')
def hf_constant(step, warmup, total, floor):
    return float(step) / float(max(1, warmup)) if step < warmup else 1.0


def hf_linear(step, warmup, total, floor):
    if step < warmup:
        return float(step) / float(max(1, warmup))
    factor = max(0.0, float(total - step) / float(max(1, total - warmup)))
    return factor * (1 - floor) + floor


def hf_cosine(step, warmup, total, floor):
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    factor = 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress))
    return max(0.0, factor * (1 - floor) + floor)


HF = {"constant": hf_constant, "linear": hf_linear, "cosine": hf_cosine}


@pytest.mark.parametrize("kind", list(HF))
@pytest.mark.parametrize(("warmup", "total", "floor"), [(0, 10, 0.0), (3, 10, 0.0), (4, 9, 0.1)])
def test_factors_are_transformers(kind, warmup, total, floor):
    schedule = LrSchedule(kind, warmup, total, floor)
    for step in range(total + 2):  # and past the end: the floor holds
        assert schedule.factor(step) == HF[kind](step, warmup, total, floor), step


@pytest.fixture(scope="module")
def gpt_out(tmp_path_factory):
    """The GPT on 2 stages under 1f1b, M = 3."""
    directory = tmp_path_factory.mktemp("gpt")
    profiled = profile("gpt", directory, batch_size=2)
    argv = ["--schedule", "1f1b", "--microbatches", str(MICROBATCHES)]
    return generate(plan(profiled, 2, directory, False, *argv), directory / "out")


def trained(out):
    """Every stage's final parameters, by name."""
    found = {}
    for k in range(len(load_pipeline(out / "pipeline.yaml").stages)):
        found.update(torch.load(out / "run" / f"final_stage_{k}.pt"))
    return found


def assert_equal_to(found, expected):
    assert set(found) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(found[name], tensor.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_adamw_with_schedule_equals_torch(gpt_out, kind, one_thread):
    argv = [str(gpt_out / "pipeline.yaml"), "--steps", str(STEPS), "--threads", "1"]
    argv += ["--optimizer", "adamw", "--lr", str(LR), "--weight-decay", "0.1"]
    argv += ["--lr-schedule", kind, "--warmup-steps", str(WARMUP), "--min-lr", str(MIN_LR)]
    assert train_main(argv) == 0
    expected, _ = single_process(
        load_pipeline(gpt_out / "pipeline.yaml"),
        STEPS,
        lambda params: torch.optim.AdamW(params, lr=LR, weight_decay=0.1),
        lambda step: HF[kind](step, WARMUP, STEPS, MIN_LR / LR),
    )
    assert_equal_to(trained(gpt_out), expected)


def momentum(params):
    return torch.optim.SGD(params, lr=LR, momentum=0.9)


def test_clipping_equals_clip_grad_norm(gpt_out, one_thread):
    max_norm = 0.1  # the gradients here have norms near 0.5
    argv = [str(gpt_out / "pipeline.yaml"), "--steps", "3", "--threads", "1"]
    argv += ["--optimizer", "momentum", "--lr", str(LR), "--clip-grad-norm", str(max_norm)]
    assert train_main(argv) == 0
    pipeline = load_pipeline(gpt_out / "pipeline.yaml")
    norms = []
    expected, _ = single_process(pipeline, 3, momentum, clip=max_norm, norms=norms)
    assert min(norms) > 2 * max_norm  # every step was clipped, by a good margin
    assert_equal_to(trained(gpt_out), expected)
    unclipped, _ = single_process(pipeline, 3, momentum)  # and clipping changed the result
    found = trained(gpt_out)
    assert any(not torch.allclose(found[n], t, rtol=1e-3) for n, t in unclipped.items())


def test_asp_clips_a_tied_copy_with_its_stage():
    """Under asp a later holder's gradient of a tied copy is its own, not a shared sum: it counts
    in its stage's norm and is scaled with the rest (it was left out of both once)."""
    from types import SimpleNamespace

    from vpipe.codegen.schema import TiedParameter
    from vpipe.runtime.clipping import GlobalNormClipper

    pipeline = SimpleNamespace(
        stages=[
            SimpleNamespace(parameters=("wte.weight",), ranks=(0,)),
            SimpleNamespace(parameters=("ln.weight", "lm_head.weight"), ranks=(1,)),
        ],
        tied=(TiedParameter(("wte.weight", "lm_head.weight"), (0, 1)),),
    )
    clipper = GlobalNormClipper(pipeline, 1, "asp", 1.0, torch.device("cpu"), replicas=None)
    grads = {"ln.weight": torch.full((4,), 0.01), "lm_head.weight": torch.full((4, 4), 100.0)}
    clipped = clipper.clip(grads, owned=False)
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in clipped.values()]))
    assert norm.item() == pytest.approx(1.0, rel=1e-5)
