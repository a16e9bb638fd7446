"""A model file checked before it is timed: one clear line for what a user got wrong (the
model does not build, its forward does not take make_batch's inputs, the loss is not a finite
scalar, the output holds what cannot travel between stages), not a traceback from deep inside
the timing."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree

from vpipe.common.errors import VpipeError
from vpipe.common.modelfile import Batch, ModelFile


def built_model(model_file: ModelFile, seed: int) -> torch.nn.Module:
    """build_model() after `seed`, checked: a module, with data (not on the meta device)."""
    torch.manual_seed(seed)
    try:
        model = model_file.build_model()
    except Exception as err:
        raise VpipeError(
            f"{model_file.source}: build_model() failed: {type(err).__name__}: {err}"
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise VpipeError(
            f"{model_file.source}: build_model() returned a {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        raise VpipeError(
            f"{model_file.source}: build_model() returned a model on the meta device "
            "(parameters without data); build it on the CPU, vpipe moves it"
        )
    return model


def check_forward(
    model: torch.nn.Module, model_file: ModelFile, batch: Batch, batch_size: int
) -> None:
    """One forward and loss on the first batch, so a mismatch fails here in one clear line."""
    source = model_file.source
    try:
        output = batch.call(model)
    except Exception as err:
        raise VpipeError(
            f"{source}: the model's forward failed on make_batch({batch_size}, 0): "
            f"{_first_line(err)}; make_batch must return what build_model()'s "
            "forward takes"
        ) from None
    _check_output(source, output)
    try:
        loss = model_file.loss_fn(output, batch.target)
    except Exception as err:
        raise VpipeError(
            f"{source}: the loss failed on the model's output and make_batch's "
            f"target: {_first_line(err)}; define loss_fn(output, target) in the "
            "model file if the default cross-entropy does not fit"
        ) from None
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
        raise VpipeError(
            f"{source}: loss_fn must return a scalar tensor, got "
            f"{getattr(loss, 'shape', type(loss).__name__)}"
        )
    if not torch.isfinite(loss.detach()):
        raise VpipeError(
            f"{source}: the loss on make_batch({batch_size}, 0) is {loss.item()}: training would "
            "stop at its first step; check make_batch's inputs and target, and the loss"
        )


def _check_output(source: str, output: Any) -> None:
    """Only tensors travel to the last stage's loss: name any other value the model returns
    (a Hugging Face cache object, most often) and the fix."""
    for path, leaf in pytree.tree_flatten_with_path(output)[0]:
        if not isinstance(leaf, torch.Tensor):
            where = pytree.keystr(path) or "it"
            fix = (
                "build the model with use_cache=False (config.use_cache = False)"
                if "cache" in type(leaf).__name__.lower() or "past" in where
                else "return tensors only (in a tuple, dict or ModelOutput)"
            )
            raise VpipeError(
                f"{source}: the model's output holds a {type(leaf).__name__} at output{where}, "
                f"which cannot travel between stages; {fix}"
            )


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
