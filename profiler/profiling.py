"""Turn a model file into a Profile: capture, one interpreted forward, then time every node."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import fx
from torch.utils import _pytree as pytree

from vpipe.common.allocator import keep_freed_memory
from vpipe.common.capture import Captured, capture, flat_tensors
from vpipe.common.errors import VpipeError
from vpipe.common.modelfile import ModelFile
from vpipe.common.optimizers import OPTIMIZERS
from vpipe.profiler.linkcost import measure_link_cost
from vpipe.profiler.measure import (
    Clock,
    LossCost,
    Reference,
    Timing,
    backward_peaks,
    classify_saved,
    measure_loss,
    reference_run,
    storage_key,
    time_accumulate,
    time_batch,
    time_node,
    time_update,
    time_whole_model,
)
from vpipe.profiler.modelcheck import built_model, check_forward
from vpipe.profiler.neighbours import busy_neighbours
from vpipe.profiler.schema import (
    LOSS_NODE,
    NodeProfile,
    Profile,
    TensorMeta,
    WholeModel,
)
from vpipe.profiler.sequence import NodeTimes, SequenceTimes, Step, time_in_sequence
from vpipe.profiler.ties import find_ties


@dataclass(frozen=True)
class ProfileSettings:
    """How to profile: the knobs of `vpipe-profile`."""

    batch_size: int = 8
    device: str | None = None  # None: cuda when available, else cpu
    optimizer: str = "sgd"
    leaves: tuple[str, ...] = ()
    warmup: int = 2
    repeats: int = 5
    # on a CPU, the least time the timed passes over the graph, and each size of the link
    # cost's messages, take together: more runs than `repeats` on a small model, whose 0.2 ms
    # passes one preemption can fill (docs/profiling.md); 0: exactly `repeats`
    min_time_s: float = 0.1
    seed: int = 0
    threads: int = 0  # CPU threads while measuring; 0: torch's default (all cores)
    beside: int = 0  # processes training the model meanwhile (profiler/neighbours.py; CPU)


def pick_device(requested: str | None) -> torch.device:
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested not in ("cpu", "cuda"):
        raise VpipeError(f"--device {requested}: use cpu or cuda")
    if requested == "cuda" and not torch.cuda.is_available():
        raise VpipeError(
            "--device cuda: no CUDA GPU is visible to PyTorch on this machine; use --device cpu"
        )
    return torch.device(requested)


def profile_model(
    model_file: ModelFile,
    settings: ProfileSettings,
    progress: Callable[[str], None] = lambda name: None,
    total: Callable[[int], None] = lambda n: None,
) -> Profile:
    """Profile `model_file` as `settings` say; `progress(name)` is called after each node."""
    if settings.optimizer not in OPTIMIZERS:
        raise VpipeError(f"--optimizer {settings.optimizer}: use one of {', '.join(OPTIMIZERS)}")
    if settings.batch_size < 1 or settings.repeats < 1 or settings.warmup < 0:
        raise VpipeError("--batch-size and --repeats must be at least 1, --warmup at least 0")
    if not settings.min_time_s >= 0:  # a NaN too
        raise VpipeError(f"--min-time {settings.min_time_s}: must be at least 0 (seconds)")
    device = pick_device(settings.device)
    if settings.threads < 0:
        raise VpipeError(f"--threads {settings.threads}: must be at least 0 (0: torch's default)")
    if settings.beside < 0:
        raise VpipeError(f"--beside {settings.beside}: must be at least 0")
    if settings.beside and device.type != "cpu":
        raise VpipeError(
            f"--beside {settings.beside}: busy neighbours share a CPU's cores, and on "
            f"{device.type} each stage has a device of its own; leave --beside out"
        )
    if settings.threads:
        torch.set_num_threads(settings.threads)
    with busy_neighbours(
        model_file.source, settings.beside, settings.batch_size, settings.threads, settings.seed
    ):
        profile = _profile(model_file, settings, device, progress, total)
    if device.type == "cpu":
        # after the neighbours: two threads of one process stand for a message's two ends, and
        # beside a busy neighbour on 2 cores they would take turns on one core
        link = measure_link_cost(settings.repeats, settings.warmup, settings.min_time_s)
        profile = replace(profile, link=link)
    progress("links")
    return profile


def _profile(
    model_file: ModelFile,
    settings: ProfileSettings,
    device: torch.device,
    progress: Callable[[str], None],
    total: Callable[[int], None],
) -> Profile:
    """Capture and time the model on `device` (the settings checked), its link cost apart."""
    keep_freed_memory()  # as the runtime's stages do, so both are timed under one allocator
    model = built_model(model_file, settings.seed).to(device).train()
    model_file.check_deterministic(settings.batch_size, 0)
    batch = model_file.batch(settings.batch_size, 0).to(device)
    check_forward(model, model_file, batch, settings.batch_size)
    captured = capture(model, batch, settings.leaves)
    gm, inputs = captured.graph, tuple(t for _, t in batch.inputs)
    backward = backward_peaks(gm, inputs)
    reference = reference_run(gm, inputs)
    clock = Clock(device)
    total(sum(n.op != "output" for n in gm.graph.nodes) + 3)  # the whole model, loss, links
    # on a CPU each node is timed where it runs, in whole passes (profiler/sequence.py)
    in_sequence = (
        None
        if clock.cuda
        else _time_in_sequence(gm, reference, model_file, captured, clock, settings)
    )
    nodes = _profile_nodes(gm, reference, backward, clock, settings, in_sequence, progress)
    del reference  # its values and autograd graph would inflate the whole model's peak
    whole, peak = time_whole_model(model, batch, clock, settings.warmup, settings.repeats)
    progress("whole model")
    model_outputs = tuple(dict.fromkeys(captured.output_leaves))
    with torch.no_grad():
        output = batch.call(model)
    cost = measure_loss(
        model_file.loss_fn,
        output,
        batch.target,
        clock,
        settings.warmup,
        settings.repeats,
        settings.min_time_s,
        timing=None if in_sequence is None else _in_sequence_loss(in_sequence),
    )
    progress("loss")
    if in_sequence is not None and in_sequence.batch_ms is not None:
        batch_ms = in_sequence.batch_ms
    else:
        batch_ms = time_batch(
            model_file, settings.batch_size, clock, settings.warmup, settings.repeats
        )
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    return Profile(
        source=model_file.source,
        source_kind="model",
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        dtype=str(dtype).removeprefix("torch."),
        batch_size=settings.batch_size,
        optimizer=settings.optimizer,
        nodes=tuple(nodes),
        outputs=model_outputs,
        torch_version=str(torch.__version__),
        seed=settings.seed,
        threads=torch.get_num_threads() if device.type == "cpu" else None,
        beside=settings.beside,
        source_sha256=model_file.sha256,
        leaves=tuple(settings.leaves),
        whole_model=WholeModel(round(whole.forward_ms, 4), round(whole.backward_ms, 4), peak),
        batch_ms=round(batch_ms, 4),
        update_call_ms=0.0 if in_sequence is None else round(in_sequence.update_call_ms, 4),
        accumulate_call_ms=0.0 if in_sequence is None else round(in_sequence.accumulate_call_ms, 4),
        loss=_loss_node(model_file, model_outputs, cost),
        ties=find_ties(gm),
        capture=captured.route,
        input_keys=captured.input_keys,
    )


def _time_in_sequence(
    gm: fx.GraphModule,
    reference: Reference,
    model_file: ModelFile,
    captured: Captured,
    clock: Clock,
    settings: ProfileSettings,
) -> SequenceTimes:
    """Every node's times in whole passes of the graph, each making its micro-batch and
    running its backward from the loss, as a stage does (a CPU's; profiler/sequence.py)."""
    inputs = tuple(reference.values[n.name] for n in gm.graph.nodes if n.op == "placeholder")
    trainable = _trainable(_state_owners(gm))

    def batch(step: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        made = model_file.batch(settings.batch_size, step)
        return tuple(t for _, t in made.inputs), made.target

    def loss(output: Any, target: torch.Tensor) -> torch.Tensor:
        return model_file.loss_fn(captured.output(pytree.tree_leaves(output)), target)

    return time_in_sequence(
        gm,
        inputs,
        clock.now,
        settings.warmup,
        settings.repeats,
        settings.min_time_s,
        trainable,
        settings.optimizer,
        Step(batch, loss),
    )


def _profile_nodes(
    gm: fx.GraphModule,
    reference: Reference,
    backward: dict[str, int],
    clock: Clock,
    settings: ProfileSettings,
    in_sequence: SequenceTimes | None,
    progress: Callable[[str], None],
) -> list[NodeProfile]:
    """Every graph node's record: its times (`in_sequence`'s where given, else each node's
    alone), and its bytes as `reference` (one run of the graph, every value kept) and
    `backward` (each node's backward peak) show them."""
    owners = _state_owners(gm)
    state_keys = {storage_key(t) for t in list(gm.parameters()) + list(gm.buffers())}
    nodes: list[NodeProfile] = []
    storage_owner: dict[int, str] = {}  # storage -> the first node that produced it
    trainable = _trainable(owners)
    for node in (n for n in gm.graph.nodes if n.op != "output"):
        outputs = flat_tensors(reference.values[node.name])
        view_of = storage_owner.get(storage_key(outputs[0]), "") if outputs else ""
        for t in outputs:
            storage_owner.setdefault(storage_key(t), node.name)
        timing = (
            time_node(node, gm, reference, clock, settings.warmup, settings.repeats)
            if in_sequence is None
            else _in_sequence(node, in_sequence)
        )
        params, buffers = owners.get(node.name, ([], []))
        stepped = trainable.get(node.name, [])
        if in_sequence is None:  # CUDA: alone
            update_ms = time_update(
                stepped, settings.optimizer, clock, settings.warmup, settings.repeats
            )
            accumulate_ms = time_accumulate(stepped, clock, settings.warmup, settings.repeats)
        else:
            timed = in_sequence.nodes.get(node.name, NodeTimes(0.0, 0.0))
            update_ms, accumulate_ms = timed.update_ms, timed.accumulate_ms
        saved = classify_saved(node, reference, state_keys)
        nodes.append(
            NodeProfile(
                name=node.name,
                op=node.op,
                target=_target_name(node, gm),
                inputs=tuple(n.name for n in node.all_input_nodes),
                outputs=tuple(_tensor_meta(t) for t in outputs),
                forward_ms=round(timing.forward_ms, 4),
                backward_ms=round(timing.backward_ms, 4),
                param_bytes=sum(_nbytes(t) for _, t in params),
                grad_bytes=sum(_nbytes(t) for t in stepped),
                buffer_bytes=sum(_nbytes(t) for _, t in buffers),
                output_bytes=sum(_nbytes(t) for t in outputs),
                saved_bytes=saved.own_bytes,
                saved_inputs=saved.inputs,
                saves_output=saved.saves_output,
                view_of=view_of,
                workspace_bytes=timing.workspace_bytes,
                backward_bytes=backward.get(node.name, 0),
                update_ms=round(update_ms, 4),
                accumulate_ms=round(accumulate_ms, 4),
                module=_module_path(node),
                parameters=tuple(name for name, _ in params),
                is_tensor=isinstance(reference.values[node.name], torch.Tensor),
            )
        )
        progress(node.name)
    return nodes


def _trainable(owners: dict[str, tuple[list, list]]) -> dict[str, list[torch.Tensor]]:
    """Per node, the parameters `_state_owners` gives it that get gradients (what its update
    steps)."""
    return {name: [t for _, t in params if t.requires_grad] for name, (params, _) in owners.items()}


def _in_sequence(node: fx.Node, times: SequenceTimes) -> Timing:
    """A node's sequence timing as the node-alone timing's record (no workspace off CUDA)."""
    node_times = times.nodes.get(node.name, NodeTimes(0.0, 0.0))  # placeholders and attributes
    return Timing(node_times.forward_ms, node_times.backward_ms, None)


def _in_sequence_loss(times: SequenceTimes) -> Timing | None:
    """The loss's sequence timing as the loss measurement takes it (None: not timed there)."""
    loss = times.loss
    return None if loss is None else Timing(loss.forward_ms, loss.backward_ms, None)


def _tensor_meta(t: torch.Tensor) -> TensorMeta:
    return TensorMeta(tuple(t.shape), str(t.dtype).removeprefix("torch."), t.is_contiguous())


def _loss_node(model_file: ModelFile, outputs: tuple[str, ...], cost: LossCost) -> NodeProfile:
    """The loss as one more node after the model's outputs (named after no graph node)."""
    kept = tuple(outputs[i] for i in cost.kept_outputs if i < len(outputs))
    if len(cost.kept_outputs) > len(kept):  # outputs that are not one tensor each: keep all
        kept = outputs
    return NodeProfile(
        name=LOSS_NODE,
        op="loss",
        target=getattr(model_file.loss_fn, "__name__", "loss_fn"),
        inputs=outputs,
        outputs=(TensorMeta((), "float32"),),
        forward_ms=round(cost.timing.forward_ms, 4),
        backward_ms=round(cost.timing.backward_ms, 4),
        param_bytes=0,
        grad_bytes=0,
        buffer_bytes=0,
        output_bytes=0,
        saved_bytes=cost.saved_bytes,
        saved_inputs=kept,
        backward_bytes=cost.backward_peak_bytes,
    )


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _state_owners(gm: fx.GraphModule) -> dict[str, tuple[list, list]]:
    """Which node owns which parameters and buffers: the first node that uses each tensor.

    A tensor used twice (a module called twice, tied weights) belongs to its first user only,
    so the profile never counts its bytes twice.
    """
    seen: set[int] = set()
    owners: dict[str, tuple[list, list]] = {}
    params: list[tuple[str, torch.Tensor]]
    buffers: list[tuple[str, torch.Tensor]]
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            params = list(module.named_parameters(prefix=str(node.target)))
            buffers = list(module.named_buffers(prefix=str(node.target)))
        elif node.op == "get_attr":
            value = _get_attr(gm, str(node.target))
            is_param = isinstance(value, torch.nn.Parameter)
            entry = [(str(node.target), value)] if isinstance(value, torch.Tensor) else []
            params, buffers = (entry, []) if is_param else ([], entry)
        else:
            continue
        params = [(n, t) for n, t in params if id(t) not in seen]
        buffers = [(n, t) for n, t in buffers if id(t) not in seen]
        seen.update(id(t) for _, t in params + buffers)
        owners[node.name] = (params, buffers)
    return owners


def _get_attr(gm: fx.GraphModule, target: str) -> object:
    value: object = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _target_name(node: fx.Node, gm: fx.GraphModule) -> str:
    """What a node runs, as a reader would name it: a module class or a function name."""
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))).__name__
    return getattr(node.target, "__name__", str(node.target))


def _module_path(node: fx.Node) -> str:
    """The qualified submodule a node belongs to, so later parts keep the model's names."""
    if node.op in ("call_module", "get_attr"):
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1]
    return path[0] if isinstance(path, tuple) else str(path)
