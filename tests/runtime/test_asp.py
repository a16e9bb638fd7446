"""asp on real gloo processes equals a single-process replay with weight stashing."""

import csv
import dataclasses

import pytest
import torch
from torch.func import functional_call

from vpipe.common.modelfile import load_model_file
from vpipe.common.schedules import FORWARD, run_actions, tied_delay
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


def replay(out, steps, stash=True, update=None):
    """Every stage's asp actions in one process, plain SGD after every backward (or
    `update(stage, weights, grads)`, which returns the new weights); a tied
    parameter's copies take the owner's summed updates in the stated order. With `stash`,
    a backward differentiates the weights its forward used (the forward is re-run on them:
    the model is deterministic); without, the stage's newest weights, as a pipeline without
    weight stashing would."""
    pipeline, stages = load_all(out)
    model_file = load_model_file(pipeline.model)
    last = len(stages) - 1
    weights = [{n: p.detach() for n, p in s.named_parameters()} for s in stages]
    actions = run_actions("asp", len(stages), 1, steps)
    # tied parameters (runtime/tied.py): each one's stages and its name on each; sums[t, i] is
    # update i of tie t, held[t, k, i] stage k's own gradient of micro-batch i
    ties = [
        (t.stages, {k: next(n for n in t.names if n in weights[k]) for k in t.stages})
        for t in pipeline.tied
    ]
    sums, held = {}, {}

    def tie_waits(k, i):
        """Whether stage k's update i applies a tied update the owner has not made yet."""
        return any(
            k in holders[1:] and (t, i - tied_delay(holders[0], k)) not in sums
            for t, (holders, _) in enumerate(ties)
            if i >= tied_delay(holders[0], k)
        )

    activations, gradients, forward_weights = {}, {}, {}

    def run(k, i, version):
        batch = model_file.batch(pipeline.batch_size, i)
        own = [batch.input(key) for key in pipeline.stages[k].batch_inputs]
        received = [
            t.detach().requires_grad_(t.is_floating_point())
            for t in activations.get((k - 1, i), ())
        ]
        leaves = {n: t.clone().requires_grad_() for n, t in version.items()}
        outputs = functional_call(stages[k], leaves, (*own, *received))
        return leaves, received, outputs, batch.target

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
                if k < last and (k + 1, i) not in gradients or tie_waits(k, i):
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
                grads = dict(zip(leaves, found[: len(leaves)], strict=True))
                for t, (holders, names) in enumerate(ties):
                    if k not in holders:
                        continue
                    mine = grads[names[k]]
                    mine = torch.zeros_like(weights[k][names[k]]) if mine is None else mine
                    if k == holders[0]:  # the owner: its gradient plus the others', in order
                        for h in holders[1:]:
                            mine = mine + held[t, h, i]
                        sums[t, i] = grads[names[k]] = mine
                    else:  # a later holder: the owner's update i - delay, if any yet
                        held[t, k, i] = mine
                        grads[names[k]] = sums.get((t, i - tied_delay(holders[0], k)))
                weights[k] = (
                    update(k, weights[k], grads)
                    if update
                    else {
                        n: weights[k][n] - LR * g if g is not None else weights[k][n]
                        for n, g in grads.items()
                    }
                )
            position[k] += 1
    for t, (holders, names) in enumerate(ties):  # the holders' updates still due at the end
        for k in holders[1:]:
            for i in range(max(0, steps - tied_delay(holders[0], k)), steps):
                weights[k][names[k]] = weights[k][names[k]] - LR * sums[t, i]
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


def torch_adamw(lr, max_norm, norms):
    """A replay `update`: per stage a torch.optim.AdamW, after clip_grad_norm_ on the stage's
    own gradients (asp's clipping rule; each norm before clipping appended to `norms`); a
    weight no path reached steps on a zero gradient, as in the runtime."""
    params, optimizers = {}, {}

    def update(k, weights, grads):
        if k not in params:  # the stage's first update: its weights are the initial ones
            params[k] = {n: t.detach().clone().requires_grad_() for n, t in weights.items()}
            optimizers[k] = torch.optim.AdamW(params[k].values(), lr=lr, weight_decay=0.1)
        for name, param in params[k].items():
            param.grad = grads[name] if grads[name] is not None else torch.zeros_like(param)
        norms.append(torch.nn.utils.clip_grad_norm_(params[k].values(), max_norm).item())
        optimizers[k].step()
        return {n: p.detach().clone() for n, p in params[k].items()}  # stashed versions stay

    return update


def test_asp_adamw_with_clipping_equals_stashed_replay(gpt_profile, tmp_path, one_thread):
    """AdamW and per-stage clipping under asp: the run equals the stashed replay with
    torch.optim.AdamW and clip_grad_norm_ per stage, and its loss falls."""
    steps, lr, max_norm = 24, 3e-3, 0.2
    out = generate(even_split(plan(gpt_profile, 2, tmp_path, False)), tmp_path / "out")
    argv = [str(out / "pipeline.yaml"), "--steps", str(steps), "--schedule", "asp"]
    argv += ["--optimizer", "adamw", "--lr", str(lr), "--weight-decay", "0.1", "--threads", "1"]
    assert train_main([*argv, "--clip-grad-norm", str(max_norm)]) == 0
    norms = []
    stashed = replay(out, steps, update=torch_adamw(lr, max_norm, norms))
    assert sum(n > max_norm for n in norms) > len(norms) / 2  # most updates were clipped
    for k in range(2):
        trained = torch.load(out / "run" / f"final_stage_{k}.pt")
        for name, tensor in trained.items():
            torch.testing.assert_close(tensor, stashed[k][name], rtol=1e-5, atol=1e-6)
    with open(out / "run" / "metrics.csv") as file:
        losses = [float(row["loss"]) for row in csv.DictReader(file)]
    assert sum(losses[-4:]) < sum(losses[:4]) - 0.1  # the mean of 4 fell by more than 0.025
