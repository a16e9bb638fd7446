"""Plan → out/: stage files, initial weights per stage, pipeline.yaml, a slurm script; all or
nothing.

The generator re-traces the model the profile names and refuses to go on if anything changed
since: the profile (its sha256 in the plan), the model file (its sha256 in the profile) or the
traced graph (node by node). Files are written into a temporary directory that replaces `out/`
only when complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from vpipe.codegen.ownership import owned_names
from vpipe.codegen.partition import StageFlow, partition
from vpipe.codegen.render import render_stage, stage_text
from vpipe.codegen.schema import Pipeline, StageSpec, TensorSpec, TiedParameter, save_pipeline
from vpipe.codegen.slurm import SCRIPT, write_sbatch
from vpipe.common.capture import Captured, capture
from vpipe.common.errors import VpipeError
from vpipe.common.modelfile import ModelFile, load_model_file
from vpipe.common.paths import names_file, recorded_model
from vpipe.common.runlock import check_free
from vpipe.common.stages import adopt, stage_tensors
from vpipe.planner.schema import Plan, load_plan
from vpipe.profiler.schema import Profile, load_profile


@dataclass(frozen=True)
class Sources:
    """Everything a plan stands on, checked to still agree with each other."""

    plan: Plan
    plan_path: Path
    profile: Profile
    model_file: ModelFile
    model: nn.Module  # built with the profile's seed: its values are the initial weights
    captured: Captured

    @property
    def graph(self) -> fx.GraphModule:
        return self.captured.graph


def generate(plan_path: str | Path, out: str | Path, gpus_per_node: int | None = None) -> Pipeline:
    """Write the pipeline for `plan_path` into `out` and return its config. Of an `out` that
    exists, only what vpipe-gen writes is replaced: a run's results, a copy of the plan or
    anything else in it stays. `gpus_per_node` (processes per node; None: all on one) shapes
    the slurm script written beside the stages."""
    out = Path(out)
    _check_output_dir(out)
    sources = load_sources(Path(plan_path))
    _check_inputs_outside(out, sources)
    flows = partition(sources.profile, sources.plan)
    _check_crossing_values(sources.profile, flows)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:  # e.g. a read-only directory
        raise VpipeError(f"cannot write {out}: {err.strerror}; choose another -o") from None
    try:
        pipeline = _write(sources, flows, staging, out)
        write_sbatch(pipeline, staging, out, str(sources.plan_path), gpus_per_node)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return pipeline


def _generated(entry: Path) -> bool:
    """What vpipe-gen writes into out/ (and Python's cache of the stage files): replaced."""
    name = entry.name
    return name in ("pipeline.yaml", SCRIPT, "weights", "__pycache__") or (
        name.startswith("stage_") and name.endswith(".py")
    )


def _check_inputs_outside(out: Path, sources: Sources) -> None:
    """An input that vpipe-gen would replace (a plan saved as out/pipeline.yaml, say) is
    refused before any work."""
    model = Path(sources.profile.source) if names_file(sources.profile.source) else None
    for what, path in (("the plan", sources.plan_path), ("the model file", model)):
        if path is None:
            continue
        try:
            first = path.resolve().relative_to(out.resolve()).parts[0]
        except ValueError:  # not inside out/
            continue
        if _generated(out / first):
            raise VpipeError(
                f"{path} is {what}, and vpipe-gen -o {out} would replace it; move it out of "
                f"{out} or choose another -o"
            )


def _swap_in(staging: Path, out: Path) -> None:
    """Put the new files in place of the old ones: everything else in `out` moves over first,
    then one rename makes the new directory `out`; the old generated files go last."""
    if not out.exists():
        staging.rename(out)
        return
    check_free(out / "run", f"vpipe-gen replaces {out}")
    for entry in out.iterdir():
        if not _generated(entry):
            entry.rename(staging / entry.name)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def load_sources(plan_path: Path) -> Sources:
    plan = load_plan(plan_path)
    profile_path = _find(plan.profile, plan_path)
    if hashlib.sha256(profile_path.read_bytes()).hexdigest() != plan.profile_sha256:
        raise VpipeError(
            f"{profile_path} changed since {plan_path} was planned from it (sha256 differs); "
            f"re-run vpipe-plan on it"
        )
    profile = load_profile(profile_path)
    if profile.source_kind != "model":
        raise VpipeError(
            f"{profile_path} was imported from PipeDream: it has no model to generate code "
            "from; profile the model with vpipe-profile model.py"
        )
    model_file = load_model_file(profile.source)
    if profile.source_sha256 and model_file.sha256 != profile.source_sha256:
        raise VpipeError(
            f"{profile.source} changed since it was profiled (sha256 differs); re-run "
            "vpipe-profile and vpipe-plan"
        )
    torch.manual_seed(profile.seed or 0)
    model = model_file.build_model().train()  # as profiled: export records training ops
    batch = model_file.batch(profile.batch_size or 1, 0)
    captured = capture(model, batch, profile.leaves, route=profile.capture)
    _check_graph(captured.graph, profile)
    return Sources(plan, plan_path, profile, model_file, model, captured)


def _find(profile: str, plan_path: Path) -> Path:
    """The plan's profile (load_plan resolved it against the plan's directory)."""
    if not Path(profile).is_file():
        raise VpipeError(f"{plan_path} names the profile {profile}, which is not there")
    return Path(profile)


def _check_graph(graph: fx.GraphModule, profile: Profile) -> None:
    traced = [n for n in graph.graph.nodes if n.op != "output"]
    for node, recorded in zip(traced, profile.nodes, strict=False):
        inputs = tuple(u.name for u in node.all_input_nodes)
        if (node.name, node.op, inputs) != (recorded.name, recorded.op, recorded.inputs):
            raise VpipeError(
                f"the model's graph no longer matches the profile at node {recorded.name!r} "
                f"(traced {node.name!r}); re-run vpipe-profile and vpipe-plan"
            )
    if len(traced) != len(profile.nodes):
        raise VpipeError(
            f"the model's graph has {len(traced)} nodes, the profile {len(profile.nodes)}; "
            "re-run vpipe-profile and vpipe-plan"
        )


def _check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise VpipeError(f"cannot write {out}: it is a file, not a directory; choose another -o")
    if out.exists() and any(out.iterdir()) and not (out / "pipeline.yaml").is_file():
        raise VpipeError(
            f"{out} exists and is not a vpipe-gen output (no pipeline.yaml); choose another -o "
            "or empty it"
        )
    if not out.parent.exists():
        raise VpipeError(f"cannot write {out}: {out.parent} does not exist")
    if not out.parent.is_dir():
        raise VpipeError(f"cannot write {out}: {out.parent} is a file; choose another -o")


def _check_crossing_values(profile: Profile, flows: tuple[StageFlow, ...]) -> None:
    for flow in flows[1:]:
        for name in flow.received:
            if len(profile.node(name).outputs) != 1 or not profile.node(name).is_tensor:
                raise VpipeError(
                    f"stage {flow.index} needs {name!r} from stage {flow.index - 1}, which is "
                    "not one tensor; only tensors travel between stages: re-plan so that its "
                    "readers share its stage, or keep its module whole with --leaf"
                )


def _write(sources: Sources, flows: tuple[StageFlow, ...], staging: Path, out: Path) -> Pipeline:
    plan, profile = sources.plan, sources.profile
    batch_size = profile.batch_size or 1  # the micro-batch: what flows through the pipeline
    batch = sources.model_file.batch(batch_size, 0)
    specs = _tensor_specs(sources.graph, tuple(t for _, t in batch.inputs))
    plan_sha = hashlib.sha256(sources.plan_path.read_bytes()).hexdigest()
    # the plan as given: the header's command reruns it from there; the model as pipeline.yaml
    # (beside the stage files) records it
    header = {
        "plan": str(sources.plan_path),
        "plan_sha256": plan_sha,
        "model": recorded_model(profile.source, out / "pipeline.yaml"),
    }
    placeholders = [n.name for n in profile.nodes if n.op == "placeholder"]
    stage_specs = []
    owners: dict[int, list[int]] = {}  # id(parameter) -> stages holding it
    (staging / "weights").mkdir()
    for flow in flows:
        owns = owned_names(sources.graph, flow.nodes)
        text = stage_text(sources.graph, flow, len(flows), owns)
        source = render_stage(text, header)
        (staging / f"stage_{flow.index}.py").write_text(source)
        holder = nn.Module()
        adopt(holder, sources.model, owns)
        tensors = stage_tensors(holder)
        torch.save(
            {k: v.detach().clone() for k, v in tensors.items()},
            staging / "weights" / f"stage_{flow.index}.pt",
        )
        for parameter in holder.parameters():
            owners.setdefault(id(parameter), []).append(flow.index)
        stage_specs.append(
            StageSpec(
                index=flow.index,
                module=f"stage_{flow.index}.py:Stage{flow.index}",
                module_sha256=hashlib.sha256(source.encode()).hexdigest(),
                weights=f"weights/stage_{flow.index}.pt",
                nodes=flow.nodes,
                ranks=stage_ranks(plan)[flow.index],
                batch_inputs=tuple(
                    sources.captured.input_keys[placeholders.index(n)] for n in flow.batch_inputs
                ),
                inputs=tuple(specs[n] for n in flow.inputs),
                outputs=tuple(specs[n] for n in flow.sent),
                recompute=flow.segments,
                parameters=tuple(name for name, _ in holder.named_parameters()),
                predicted=plan.stages[flow.index].predicted,
            )
        )
    names: dict[int, list[str]] = {}
    for name, parameter in sources.model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    tied = tuple(
        TiedParameter(tuple(names[key]), tuple(stages))
        for key, stages in owners.items()
        if len(stages) > 1
    )
    pipeline = Pipeline(
        plan=_relative(sources.plan_path, out),
        plan_sha256=plan_sha,
        model=profile.source,
        model_sha256=profile.source_sha256,
        seed=profile.seed or 0,
        leaves=profile.leaves,
        batch_size=batch_size,
        microbatches=plan.settings.microbatches,
        schedule=plan.settings.schedule,
        optimizer=plan.settings.optimizer,
        output_spec=pytree.treespec_dumps(sources.captured.output_spec),
        output_leaves=sources.captured.output_leaves,
        stages=tuple(stage_specs),
        tied=tied,
        predicted=plan.predicted,
    )
    # the model is recorded relative to staging/, out/'s sibling: the same path as from out/
    save_pipeline(pipeline, staging / "pipeline.yaml")
    return pipeline


def _tensor_specs(graph: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> dict[str, TensorSpec]:
    """Shape and dtype of every tensor value at the micro-batch size, from one forward."""
    specs: dict[str, TensorSpec] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node):
            value = super().run_node(node)
            if isinstance(value, torch.Tensor):
                dtype = str(value.dtype).removeprefix("torch.")
                specs[node.name] = TensorSpec(node.name, tuple(value.shape), dtype)
            return value

    with torch.no_grad():
        Recorder(graph).run(*inputs)
    return specs


def _relative(path: Path, out: Path) -> str:
    """`path` as seen from inside `out` (where pipeline.yaml lives)."""
    return os.path.relpath(path.resolve(), out.resolve())


def stage_ranks(plan: Plan) -> tuple[tuple[int, ...], ...]:
    """Each stage's ranks: its replicas', consecutive, stages in order. torchrun numbers a
    node's processes consecutively, so a stage's replicas share a node where they fit, and its
    gradient all-reduce stays inside it."""
    ranks, first = [], 0
    for stage in plan.stages:
        ranks.append(tuple(range(first, first + stage.replicas)))
        first += stage.replicas
    return tuple(ranks)
