"""Paths that vpipe's files record, and how a model reference tells a file from a module.

A file records every path relative to its own directory, and a reader joins it to that directory
again, so each command runs from any folder and a tree of model, profile, plan and pipeline can
be moved as a whole. Paths given absolute are recorded relative too, for the same reason. In
memory, a record holds paths as seen from here (the current directory): the schema modules
convert as they save and load. (pipeline.yaml's `plan` is the exception: relative to the pipeline
file in memory too, which is what its readers join it to.) No torch here: the planner reads
profiles through this.
"""

from __future__ import annotations

import os
from pathlib import Path


def names_file(reference: str) -> bool:
    """Whether a model reference is a file (`model.py`, `models/net`) rather than an importable
    module (`vpipe.models.gpt`): it ends with .py, has a slash, or exists from here."""
    return reference.endswith(".py") or "/" in reference or Path(reference).exists()


def recorded_path(path: str | Path, file: str | Path) -> str:
    """`path`, as seen from here, as `file` records it: relative to the file's directory. Both
    directories are resolved, so a link on either side does not make `..` climb the wrong way;
    the last part is kept, so a linked model file stays the link."""
    path = Path(path)
    return os.path.relpath(path.parent.resolve() / path.name, Path(file).parent.resolve())


def resolved_path(recorded: str, file: str | Path) -> str:
    """A path `file` records, as seen from here. Files written before paths were recorded this
    way named them from where their command ran: when only that path exists, it is the one."""
    joined = joined_path(recorded, file)
    if not os.path.exists(joined) and os.path.exists(recorded):
        return recorded
    return joined


def joined_path(relative: str, file: str | Path) -> str:
    """`relative` to `file`'s directory, as seen from here, tidied where that is safe."""
    joined = os.path.join(os.path.dirname(file), relative)
    tidy = os.path.normpath(joined)  # `a/../b` is b only if a is not a link
    return tidy if os.path.realpath(tidy) == os.path.realpath(joined) else joined


def recorded_model(reference: str, file: str | Path) -> str:
    """A model reference as `file` records it: a module name as it is; a file as a path that
    still reads as one wherever it is read (`./model`, not `model`)."""
    if not names_file(reference):
        return reference
    recorded = recorded_path(reference, file)
    return recorded if recorded.endswith(".py") or "/" in recorded else f"./{recorded}"


def resolved_model(reference: str, file: str | Path) -> str:
    """A model reference `file` records, as seen from here (a module name as it is)."""
    if reference.endswith(".py") or "/" in reference:
        return resolved_path(reference, file)
    return reference


def refuse_overwriting(outputs: dict[str, str | None], inputs: dict[str, str | None]) -> None:
    """Refuse, before any work, an output path that is one of the command's inputs (or another
    of its outputs): writing it would destroy what the command reads. `outputs` maps an option
    (`-o`) to its path, `inputs` what is read (`the model file`) to its path; None is absent."""
    from vpipe.common.errors import VpipeError

    seen: dict[str, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        real = os.path.realpath(path)
        for what, source in inputs.items():
            if source is not None and os.path.realpath(source) == real:
                raise VpipeError(
                    f"{option} {path} is {what}, which this command reads; writing there would "
                    f"replace it: choose another {option}"
                )
        if real in seen:
            raise VpipeError(f"{option} and {seen[real]} both name {path}; give each its own path")
        seen[real] = option
