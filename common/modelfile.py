"""The model-file contract: how vpipe gets a model, its batches and its loss from user code.

A model file (a path, or an importable module name) defines `build_model() -> nn.Module`,
`make_batch(batch_size, step) -> (inputs, target)` and optionally `loss_fn(output, target)`.
See docs/model-file.md.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from vpipe.common.errors import VpipeError
from vpipe.common.paths import names_file

CONTRACT = (
    "a model file defines build_model() -> nn.Module and make_batch(batch_size, step) -> "
    "(inputs, target); see docs/model-file.md"
)


def default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last dimension: classifiers and next-token language models alike."""
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


@dataclass(frozen=True)
class ModelFile:
    """A loaded model file: the three contract functions and where they came from."""

    source: str
    build_model: Callable[[], torch.nn.Module]
    make_batch: Callable[[int, int], tuple[object, torch.Tensor]]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    sha256: str | None  # of the source file, so later parts can tell it changed
    epoch_samples: int | None = None  # EPOCH_SAMPLES: what `--epochs` counts in

    def batch(self, batch_size: int, step: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Call make_batch and check its shape: inputs as a tuple, every batch dim right."""
        try:
            result = self.make_batch(batch_size, step)
        except Exception as err:
            raise VpipeError(
                f"{self.source}: make_batch({batch_size}, {step}) failed: "
                f"{type(err).__name__}: {err}"
            ) from None
        if not (isinstance(result, tuple) and len(result) == 2):
            raise VpipeError(
                f"{self.source}: make_batch must return (inputs, target), got "
                f"{type(result).__name__}; {CONTRACT}"
            )
        inputs, target = result
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        named = [(f"input {i}", t) for i, t in enumerate(inputs)] + [("target", target)]
        for what, value in named:
            if not isinstance(value, torch.Tensor):
                raise VpipeError(
                    f"{self.source}: make_batch's {what} is a "
                    f"{type(value).__name__}, not a tensor; {CONTRACT}"
                )
            if value.dim() == 0 or value.shape[0] != batch_size:
                raise VpipeError(
                    f"{self.source}: make_batch({batch_size}, {step}) returned "
                    f"{what} of shape {tuple(value.shape)}; its first dimension "
                    f"must be the batch size {batch_size}"
                )
        return inputs, target


def load_model_file(source: str) -> ModelFile:
    """Load a model file by path (`model.py`) or by module name (`pkg.module`)."""
    module, path = _import(source)
    missing = [
        name for name in ("build_model", "make_batch") if not callable(getattr(module, name, None))
    ]
    if missing:
        raise VpipeError(f"{source} defines no {' and no '.join(missing)}(); {CONTRACT}")
    if not callable(getattr(module, "loss_fn", default_loss)):
        raise VpipeError(f"{source}: loss_fn is not a function; define loss_fn(output, target)")
    sha = hashlib.sha256(path.read_bytes()).hexdigest() if path else None
    return ModelFile(
        source=source,
        build_model=module.build_model,
        make_batch=module.make_batch,
        loss_fn=getattr(module, "loss_fn", default_loss),
        sha256=sha,
        epoch_samples=_epoch_samples(module, source),
    )


def _epoch_samples(module: ModuleType, source: str) -> int | None:
    value = getattr(module, "EPOCH_SAMPLES", None)
    if value is not None and (not isinstance(value, int) or value < 1):
        raise VpipeError(f"{source}: EPOCH_SAMPLES must be a positive int (got {value!r})")
    return value


def _import(source: str) -> tuple[ModuleType, Path | None]:
    path = Path(source)
    try:
        if names_file(source):
            if not path.is_file():
                raise VpipeError(
                    f"model file {source} not found; give a path to a .py file or "
                    "an importable module name such as vpipe.models.gpt"
                )
            name = (
                f"vpipe_user_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
            )
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            return module, path
        module = importlib.import_module(source)
    except VpipeError:
        raise
    except ModuleNotFoundError as err:
        if err.name and source.startswith(err.name):
            raise VpipeError(
                f"no model file or importable module named {source!r}; give a path "
                "to a .py file or an importable module name"
            ) from None
        raise VpipeError(f"importing {source} failed: {err}") from None
    except Exception as err:
        raise VpipeError(f"importing {source} failed: {type(err).__name__}: {err}") from None
    file = getattr(module, "__file__", None)
    return module, Path(file) if file else None
