"""The single-process references the pipelined runs are checked against: gradient accumulation
for the synchronous schedules, a replay with weight stashing for asp."""

import torch
from torch.func import functional_call

from vpipe.common.modelfile import load_model_file
from vpipe.common.schedules import FORWARD, run_actions, tied_delay

from ..codegen.pipelines import load_all

LR = 0.05


def momentum_sgd(params):
    return torch.optim.SGD(params, lr=LR, momentum=0.9)


def single_process(
    pipeline,
    steps,
    make_optimizer=momentum_sgd,
    lr_lambda=None,
    clip=None,
    norms=None,
    device="cpu",
    skip=None,
):
    """The reference: one model, M micro-batches' gradients summed (loss / M), one optimizer
    step per step (SGD with momentum unless told), its rate scaled by torch's LambdaLR with
    `lr_lambda`, its gradients clipped by clip_grad_norm_ to `clip` (each step's norm before
    clipping appended to `norms`); step `skip` computes its gradients and applies nothing, as
    --skip-nonfinite skips one; micro-batch i is make_batch(batch_size, i), on `device`, as the
    model. Returns the parameters and each step's loss."""
    model_file = load_model_file(pipeline.model)
    torch.manual_seed(pipeline.seed)
    model = model_file.build_model().to(device)
    optimizer = make_optimizer(model.parameters())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda) if lr_lambda else None
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        total = 0.0
        for j in range(pipeline.microbatches):
            batch = model_file.batch(pipeline.batch_size, step * pipeline.microbatches + j)
            batch = batch.to(device)
            loss = model_file.loss_fn(batch.call(model), batch.target)
            (loss / pipeline.microbatches).backward()
            total += loss.item()
        losses.append(total / pipeline.microbatches)
        if step == skip:
            continue
        if clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if norms is not None:
                norms.append(norm.item())
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return dict(model.named_parameters()), losses


def clipped_optimizers(make_optimizer, max_norm, norms):
    """A replay `update`: per stage a torch.optim optimizer of `make_optimizer`'s, after
    clip_grad_norm_ on the stage's own gradients (asp's clipping rule; each norm before clipping
    appended to `norms`); a weight no path reached steps on a zero gradient, as in the runtime."""
    params, optimizers = {}, {}

    def update(k, weights, grads):
        if k not in params:  # the stage's first update: its weights are the initial ones
            params[k] = {n: t.detach().clone().requires_grad_() for n, t in weights.items()}
            optimizers[k] = make_optimizer(params[k].values())
        for name, param in params[k].items():
            param.grad = grads[name] if grads[name] is not None else torch.zeros_like(param)
        norms.append(torch.nn.utils.clip_grad_norm_(params[k].values(), max_norm).item())
        optimizers[k].step()
        return {n: p.detach().clone() for n, p in params[k].items()}  # stashed versions stay

    return update


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


def replicated_replay(out, steps, replicas, update=None):
    """asp with data-parallel replicas (common/replicas.py) in one process, in micro-batch
    order: stage s, with r replicas and w processes from it to the last, runs micro-batch m on
    replica m mod r, whose forward follows that replica's backward of m - d r (d = ceil(w / r),
    the micro-batches a replica holds in flight) and so the update that backward joined: m's
    forward uses the version after max(0, m // r - d + 1) updates. Update k of stage s is plain
    SGD (or `update(stage, weights, grads)`, as `replay`'s) on the SUM of micro-batches
    k r .. k r + r - 1's gradients, each for the version its forward used (weight stashing, the
    replicas holding the same versions). With every r = 1 it is `replay`'s straight asp.
    Returns each stage's final weights and each micro-batch's loss."""
    pipeline, stages = load_all(out)
    model_file = load_model_file(pipeline.model)
    depth = [-(-sum(replicas[s:]) // r) for s, r in enumerate(replicas)]
    versions = [[{n: p.detach() for n, p in stage.named_parameters()}] for stage in stages]
    pending = [{} for _ in stages]  # per stage: the summed gradients of its next update
    losses = []
    for m in range(steps):
        batch = model_file.batch(pipeline.batch_size, m)
        used = [
            {n: t.clone().requires_grad_() for n, t in versions[s][max(0, m // r - d + 1)].items()}
            for s, (r, d) in enumerate(zip(replicas, depth, strict=True))
        ]
        sent = ()
        for spec, stage, weights in zip(pipeline.stages, stages, used, strict=True):
            own = [batch.input(key) for key in spec.batch_inputs]
            sent = functional_call(stage, weights, (*own, *sent))
            sent = sent if isinstance(sent, tuple) else (sent,)
        loss = model_file.loss_fn(sent[0], batch.target)
        losses.append(loss.item())
        found = torch.autograd.grad(loss, [t for w in used for t in w.values()], allow_unused=True)
        found = iter(found)
        for s, weights in enumerate(used):
            for name, weight in weights.items():
                grad = next(found)
                grad = torch.zeros_like(weight) if grad is None else grad
                pending[s][name] = pending[s].get(name, 0) + grad
            if (m + 1) % replicas[s] == 0:  # the stage's replicas have all joined the update
                newest = versions[s][-1]
                versions[s].append(
                    update(s, newest, pending[s])
                    if update
                    else {n: newest[n] - LR * g for n, g in pending[s].items()}
                )
                pending[s] = {}
    return [v[-1] for v in versions], losses


def asp_switched_replay(pipeline, segments, steps):
    """Plain-SGD asp over the original model in one process, by parameter name: in a segment
    starting at micro-batch `start` on a pipeline of S stages, micro-batch m's forward on stage
    s uses the version after start + max(0, m - start - (S - s) + 1) updates (the pipeline
    drains at a switch and fills again; each stage updates after each backward, on the
    gradient for the version its forward used). `segments`: (start, {parameter: stage})."""
    model_file = load_model_file(pipeline.model)
    torch.manual_seed(pipeline.seed)
    model = model_file.build_model()
    versions = {n: [p.detach()] for n, p in model.named_parameters()}
    bounds = [start for start, _ in segments[1:]] + [steps]
    for (start, stage_of), end in zip(segments, bounds, strict=True):
        depth = max(stage_of.values()) + 1
        for m in range(start, end):
            used = {
                n: versions[n][start + max(0, m - start - (depth - stage_of[n]) + 1)]
                .clone()
                .requires_grad_()
                for n in versions
            }
            batch = model_file.batch(pipeline.batch_size, m)
            loss = model_file.loss_fn(functional_call(model, used, batch.args), batch.target)
            grads = torch.autograd.grad(loss, list(used.values()), allow_unused=True)
            for (name, weight), grad in zip(used.items(), grads, strict=True):
                step = torch.zeros_like(weight) if grad is None else grad
                versions[name].append(versions[name][-1] - LR * step)
    return {n: v[-1] for n, v in versions.items()}


def stage_of(pipeline):
    return {name: s.index for s in pipeline.stages for name in s.parameters}
