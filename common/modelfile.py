"""The model-file contract: how vpipe gets a model, its batches and its loss from user code.

A model file (a path, or an importable module name) defines `build_model() -> nn.Module`,
`make_batch(batch_size, step) -> (inputs, target)` and optionally `loss_fn(output, target)`.
See docs/model-file.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from vpipe.common.errors import VpipeError
from vpipe.common.paths import names_file

CONTRACT = (
    "a model file defines build_model() -> nn.Module and make_batch(batch_size, step) -> "
    "(inputs, target); see docs/model-file.md"
)


def default_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last dimension: classifiers and next-token language models alike.
    Of a structured output (a Hugging Face `ModelOutput`, a dict) it takes `logits`, of a tuple
    its first item; target positions of -100 are ignored, as Hugging Face's labels mark them."""
    logits = output
    if isinstance(output, Mapping):
        if "logits" not in output:
            raise VpipeError(
                f"the model returns {type(output).__name__} without 'logits'; define "
                "loss_fn(output, target) in the model file"
            )
        logits = output["logits"]
    elif isinstance(output, (tuple, list)):
        logits = output[0]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


@dataclass(frozen=True)
class ModelFile:
    """A loaded model file: the three contract functions and where they came from."""

    source: str
    build_model: Callable[[], torch.nn.Module]
    make_batch: Callable[[int, int], tuple[Any, torch.Tensor]]
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]
    sha256: str | None  # of the source file, so later parts can tell it changed
    epoch_samples: int | None = None  # EPOCH_SAMPLES: what `--epochs` counts in

    def batch(self, batch_size: int, step: int) -> Batch:
        """Call make_batch and check it: inputs a tensor, a tuple of tensors or a dict of them
        (keyword arguments), every batch dimension right."""
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
        keyword = isinstance(inputs, Mapping)
        if keyword:
            named = [(str(k), v) for k, v in inputs.items()]
        else:
            inputs = inputs if isinstance(inputs, tuple) else (inputs,)
            named = [(str(i), v) for i, v in enumerate(inputs)]
        for key, value in [*named, ("target", target)]:
            what = "target" if key == "target" else f"input {key}"
            if not isinstance(value, torch.Tensor):
                raise VpipeError(
                    f"{self.source}: make_batch's {what} is a "
                    f"{type(value).__name__}, not a tensor; {CONTRACT}"
                )
            if value.is_meta:
                raise VpipeError(
                    f"{self.source}: make_batch's {what} is on the meta device (a shape without "
                    "data); return CPU tensors"
                )
            if value.dim() == 0 or value.shape[0] != batch_size:
                raise VpipeError(
                    f"{self.source}: make_batch({batch_size}, {step}) returned "
                    f"{what} of shape {tuple(value.shape)}; its first dimension "
                    f"must be the batch size {batch_size}"
                )
        return Batch(tuple(named), keyword, target)

    def check_deterministic(self, batch_size: int, step: int) -> None:
        """make_batch(batch_size, step) twice, the global random state disturbed in between,
        must give the same tensors: the stage that reads the inputs and the one that reads the
        target each make the batch, so one drawn from the global state would differ between
        them. The global state is left as it was."""
        with torch.random.fork_rng(devices=[]):
            first = self.batch(batch_size, step)
            torch.rand(1)
            second = self.batch(batch_size, step)
        pairs = [*zip(first.inputs, second.inputs, strict=True)]
        pairs.append((("target", first.target), ("target", second.target)))
        for (key, a), (_, b) in pairs:
            # NaN == NaN here: a batch with NaN in it is the same batch (the loss check says
            # what is wrong with it), not a different one
            if not (torch.equal(a, b) or _same_with_nan(a, b)):
                what = "the target" if key == "target" else f"input {key}"
                raise VpipeError(
                    f"{self.source}: make_batch({batch_size}, {step}) gave a different {what} "
                    "when called again: it draws from torch's global random state, so the "
                    "stages would each see another batch; draw from a generator seeded by the "
                    "step: g = torch.Generator().manual_seed(step)"
                )


def _same_with_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and a.is_floating_point()
        and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
    )


@dataclass(frozen=True)
class Batch:
    """One batch from make_batch: the model's inputs by key ("0", "1", ... when positional,
    the argument's name when make_batch returned a dict) and the target."""

    inputs: tuple[tuple[str, torch.Tensor], ...]
    keyword: bool  # model(**inputs) rather than model(*inputs)
    target: torch.Tensor

    @classmethod
    def positional(cls, *inputs: torch.Tensor) -> Batch:
        """Positional inputs and no target: to capture a model outside training."""
        return cls(tuple((str(i), t) for i, t in enumerate(inputs)), False, torch.empty(0))

    @property
    def args(self) -> tuple[torch.Tensor, ...]:
        return () if self.keyword else tuple(t for _, t in self.inputs)

    @property
    def kwargs(self) -> dict[str, torch.Tensor]:
        return dict(self.inputs) if self.keyword else {}

    def input(self, key: str) -> torch.Tensor:
        return dict(self.inputs)[key]

    def to(self, device: torch.device | str) -> Batch:
        moved = tuple((k, t.to(device)) for k, t in self.inputs)
        return Batch(moved, self.keyword, self.target.to(device))

    def call(self, model: Callable[..., Any]) -> Any:
        """The model on these inputs, as its user would call it."""
        return model(*self.args, **self.kwargs)


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
            if spec is None or spec.loader is None:
                raise VpipeError(
                    f"{source} is not a Python file; give the model file (model.py) that "
                    "defines build_model and make_batch"
                )
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            # what it prints on stderr is passed on, unless it exits: argparse's usage line
            # would read as vpipe's own
            with contextlib.redirect_stderr(io.StringIO()) as said:
                spec.loader.exec_module(module)
            sys.stderr.write(said.getvalue())
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
    except SystemExit as err:  # sys.exit(), or argparse refusing vpipe's own arguments
        raise VpipeError(
            f"{source} exited (SystemExit: {err.code}) while vpipe imported it; a model file "
            "must not run a script, exit or parse the command line at import: put that under "
            '`if __name__ == "__main__":`'
        ) from None
    except Exception as err:
        raise VpipeError(f"importing {source} failed: {type(err).__name__}: {err}") from None
    file = getattr(module, "__file__", None)
    return module, Path(file) if file else None
