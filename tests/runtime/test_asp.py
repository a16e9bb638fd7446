"""asp on real gloo processes equals a single-process replay with weight stashing."""

import dataclasses

import pytest
import torch
from torch.func import functional_call

from vpipe.common.modelfile import load_model_file
from vpipe.common.schedules import FORWARD, run_actions
from vpipe.common.yamlfile import load_yaml
from vpipe.planner.schema import load_plan, save_plan
from vpipe.runtime.cli import main as train_main

from ..codegen.pipelines import generate, load_all, plan, profile

STEPS = 8
LR = 0.05


@pytest.fixture(scope="module")
def gpt_profile(tmp_path_factory):
    return profile("gpt", tmp_path_factory.mktemp("gpt"), batch_size=2)


def even_split(path):
    """The same nodes in equal runs of the profile's order, so that early stages hold layers
    whose gradients depend on their own weights (where stashing matters). The planner's split
    of this small GPT puts little before its costly head."""
    planned = load_plan(path)
    order = [n for stage in planned.stages for n in stage.nodes]
    size = -(-len(order) // len(planned.stages))
    stages = tuple(
        dataclasses.replace(stage, nodes=tuple(order[k * size : (k + 1) * size]), recompute=())
        for k, stage in enumerate(planned.stages)
    )
    save_plan(dataclasses.replace(planned, stages=stages), path)
    return path


def replay(out, steps, stash=True):
    """Every stage's asp actions in one process, plain SGD after every backward. With `stash`,
    a backward differentiates the weights its forward used (the forward is re-run on them:
    the model is deterministic); without, the stage's newest weights, as a pipeline without
    weight stashing would."""
    pipeline, stages = load_all(out)
    model_file = load_model_file(pipeline.model)
    last = len(stages) - 1
    weights = [{n: p.detach() for n, p in s.named_parameters()} for s in stages]
    actions = run_actions("asp", len(stages), 1, steps)
    activations, gradients, forward_weights = {}, {}, {}

    def run(k, i, version):
        inputs, target = model_file.batch(pipeline.batch_size, i)
        own = [inputs[j] for j in pipeline.stages[k].batch_inputs]
        received = [
            t.detach().requires_grad_(t.is_floating_point())
            for t in activations.get((k - 1, i), ())
        ]
        leaves = {n: t.clone().requires_grad_() for n, t in version.items()}
        outputs = functional_call(stages[k], leaves, (*own, *received))
        return leaves, received, outputs, target

    position = [0] * len(stages)
    while any(p < len(a) for p, a in zip(position, actions, strict=True)):
        for k in range(len(stages)):
            if position[k] == len(actions[k]):
                continue
            action = actions[k][position[k]]
            i = action.microbatch
            if action.kind == FORWARD:
                if k and (k - 1, i) not in activations:
                    continue
                forward_weights[k, i] = weights[k]
                _, _, outputs, _ = run(k, i, weights[k])
                activations[k, i] = [o.detach() for o in outputs]
            else:
                if k < last and (k + 1, i) not in gradients:
                    continue
                leaves, received, outputs, target = run(
                    k, i, forward_weights[k, i] if stash else weights[k]
                )
                if k == last:
                    roots, seeds = [model_file.loss_fn(outputs[0], target)], None
                else:
                    pairs = [
                        (o, g)
                        for o, g in zip(
                            [o for o in outputs if o.is_floating_point()],
                            gradients[k + 1, i],
                            strict=True,
                        )
                        if o.requires_grad
                    ]
                    roots, seeds = [o for o, _ in pairs], [g for _, g in pairs]
                floats = [t for t in received if t.is_floating_point()]
                wrt = [*leaves.values(), *floats]
                found = (
                    torch.autograd.grad(roots, wrt, seeds, allow_unused=True)
                    if roots and wrt
                    else [None] * len(wrt)
                )
                gradients[k, i] = [
                    g if g is not None else torch.zeros_like(t)
                    for g, t in zip(found[len(leaves) :], floats, strict=True)
                ]
                weights[k] = {
                    n: weights[k][n] - LR * g if g is not None else weights[k][n]
                    for n, g in zip(leaves, found[: len(leaves)], strict=True)
                }
            position[k] += 1
    return weights


@pytest.mark.parametrize("stages", [2, 4])
def test_asp_equals_stashed_replay(gpt_profile, tmp_path, stages):
    out = generate(even_split(plan(gpt_profile, stages, tmp_path, False)), tmp_path / "out")
    argv = [str(out / "pipeline.yaml"), "--steps", str(STEPS), "--lr", str(LR)]
    assert train_main([*argv, "--optimizer", "sgd", "--schedule", "asp", "--threads", "1"]) == 0
    stashed, unstashed = replay(out, STEPS), replay(out, STEPS, stash=False)
    differs = False
    for k in range(stages):
        trained = torch.load(out / "run" / f"final_stage_{k}.pt")
        for name, tensor in trained.items():
            torch.testing.assert_close(tensor, stashed[k][name], rtol=1e-5, atol=1e-6)
            differs |= not torch.allclose(tensor, unstashed[k][name], rtol=1e-5, atol=1e-6)
        # weight versions alive on stage k, measured by the run: never more than S - k
        peak = load_yaml(out / "run" / f"stage_{k}.yaml", "run")["peak_weight_versions"]
        assert peak <= stages - k
    assert differs  # without stashing, the same schedule computes something else
