"""The stage-file contract, shared by the generator that writes stage files and the runtime that
builds them.

Generated stage files call `adopt`; the runtime and the tests call `load_stage`. The model is
built on the meta device (no memory), the stage takes its submodules, parameters and buffers by
their original names, and only then are those materialised and loaded from the stage's weights
file, so a stage never holds another stage's weights and its `state_dict` keys are the original
model's.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from vpipe.common.errors import VpipeError
from vpipe.common.modelfile import load_model_file


def adopt(stage: nn.Module, model: nn.Module, names: Iterable[str]) -> None:
    """Give `stage` the objects `model` holds under `names`, at the same dotted paths.

    Containers on the way get empty `nn.Module`s, so `blocks.3.attn` is reachable as
    `getattr(self.blocks, "3").attn` and its parameters keep their original names.
    """
    for name in names:
        *path, leaf = name.split(".")
        source, target = model, stage
        for part in path:
            source = getattr(source, part)
            if part not in target._modules:
                target.add_module(part, nn.Module())
            target = target.get_submodule(part)
        value = getattr(source, leaf)
        if isinstance(value, nn.Module):
            target.add_module(leaf, value)
        elif isinstance(value, nn.Parameter):
            target.register_parameter(leaf, value)
        else:
            persistent = leaf not in source._non_persistent_buffers_set
            target.register_buffer(leaf, value, persistent=persistent)


def stage_tensors(stage: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of a stage by original name, non-persistent buffers included
    (a stage built on the meta device has no other source for them)."""
    return dict(stage.named_parameters()) | dict(stage.named_buffers())


def build_stage(
    stage_class: Callable[[nn.Module], nn.Module],
    build_model: Callable[[], nn.Module],
    weights: str | Path,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Build one stage on `device` holding only its own parameters, loaded from `weights`."""
    with torch.device("meta"):
        model = build_model()
    stage = stage_class(model)
    del model
    to_empty_tied(stage, device)
    try:
        saved = torch.load(weights, map_location=device, weights_only=True, mmap=True)
    except FileNotFoundError:
        raise VpipeError(f"{weights} is missing; regenerate with vpipe-gen") from None
    except Exception as err:  # truncated, overwritten, not a torch file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise VpipeError(
            f"{weights} cannot be read, it is damaged ({type(err).__name__}: {reason[:120]}); "
            "regenerate it with vpipe-gen"
        ) from None
    mine = stage_tensors(stage)
    check_tensors(saved, mine, str(weights), "regenerate it with vpipe-gen")
    with torch.no_grad():
        for name, tensor in mine.items():
            tensor.copy_(saved[name])
    return stage


def check_tensors(
    found: object, expected: Mapping[str, torch.Tensor], where: str, remedy: str
) -> None:
    """`found` holds exactly `expected`'s names, each a tensor of its shape and dtype: a file
    of another model, plan or version names itself and the first tensor that differs."""
    if not isinstance(found, Mapping):
        raise VpipeError(f"{where} holds a {type(found).__name__}, not named tensors; {remedy}")
    if set(found) != set(expected):
        differ = ", ".join(sorted(map(str, set(found) ^ set(expected)))[:3])
        raise VpipeError(f"{where}: its tensors are not the stage's ({differ} differ); {remedy}")
    for name, tensor in expected.items():
        got = found[name]
        if not isinstance(got, torch.Tensor) or (got.shape, got.dtype) != (
            tensor.shape,
            tensor.dtype,
        ):
            shown = (tuple(got.shape), got.dtype) if isinstance(got, torch.Tensor) else type(got)
            raise VpipeError(
                f"{where}: {name} is {shown}; the stage expects "
                f"{(tuple(tensor.shape), tensor.dtype)}: {remedy}"
            )


def to_empty_tied(module: nn.Module, device: torch.device | str) -> None:
    """`module.to_empty(device=device)`, keeping tied weights (an embedding and a head, say) one
    tensor: to_empty gives each name its own."""
    ties = _ties(module)
    module.to_empty(device=device)
    _retie(module, ties)


def _ties(module: nn.Module) -> list[list[str]]:
    """Names that reach the same parameter, grouped (the first is the one state_dict keeps)."""
    groups: dict[int, list[str]] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(parameter), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _retie(module: nn.Module, ties: list[list[str]]) -> None:
    for first, *rest in ties:
        shared = module.get_parameter(first)
        for name in rest:
            owner, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(owner), leaf, shared)


def load_stage(
    directory: str | Path,
    module: str,
    weights: str,
    model_source: str,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """A generated stage (`module` as "stage_<k>.py:Stage<k>", relative to `directory`) holding
    only its own weights, loaded from `weights`."""
    directory = Path(directory)
    file, _, class_name = module.partition(":")
    path = directory / file
    if not path.is_file():
        raise VpipeError(f"{path} is missing; regenerate with vpipe-gen")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"vpipe_stage_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # not a .py file: pipeline.yaml was edited
        raise VpipeError(f"{path} is not a Python file; regenerate it with vpipe-gen")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    try:
        spec.loader.exec_module(loaded)
    except Exception as err:
        raise VpipeError(
            f"{path} cannot be loaded ({type(err).__name__}: {err}); regenerate it with vpipe-gen"
        ) from None
    stage_class = getattr(loaded, class_name, None)
    if not isinstance(stage_class, type):
        defined = sorted(
            k for k, v in vars(loaded).items() if isinstance(v, type) and k[:5] == "Stage"
        )
        raise VpipeError(
            f"{path} defines no class {class_name} (it has {', '.join(defined) or 'none'}); "
            "regenerate it with vpipe-gen"
        )
    build_model = load_model_file(model_source).build_model
    return build_stage(stage_class, build_model, directory / weights, device)


@contextlib.contextmanager
def edits_blamed(path: Path, written_sha256: str) -> Iterator[None]:
    """Run the body; an exception raised in the stage file `path` while that file is not what
    vpipe-gen wrote (`written_sha256`) is the edit's doing: bad input naming the line and the
    fix, not a vpipe bug. In a file as generated, the same exception is a bug."""
    try:
        yield
    except VpipeError:
        raise
    except Exception as err:
        resolved = str(path.resolve())
        lines = [
            frame.lineno
            for frame in traceback.extract_tb(err.__traceback__)
            if str(Path(frame.filename).resolve()) == resolved
        ]
        if not lines or hashlib.sha256(path.read_bytes()).hexdigest() == written_sha256:
            raise
        first = next((line for line in str(err).splitlines() if line.strip()), "")
        raise VpipeError(
            f"{path} line {lines[-1]}: {type(err).__name__}: {first.strip()} (the file was "
            "edited since vpipe-gen wrote it: fix the edit, or regenerate it with vpipe-gen)"
        ) from err
