"""A run config (`configs/bert_4vpipe.yml`): one file that names the model and the options of
each step, profile -> plan -> gen -> train, for `vpipe-run`.

A section's keys are its command's own options, `_` for `-` (`batch_size: 16` is
`--batch-size 16`), checked against that command's parser: the file can set exactly what the
command can, and never lags it. Frozen records; dictionaries exist only at the YAML edge. Paths
(the model file, `output`, `plot`, `checkpoint_dir`) are relative to the config file's
directory, as in every file vpipe reads.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpipe.codegen.cli import build_parser as gen_parser
from vpipe.common.errors import VpipeError
from vpipe.common.paths import joined_path, resolved_model
from vpipe.common.yamlfile import check_header, load_yaml
from vpipe.planner.cli import build_parser as plan_parser
from vpipe.profiler.cli import build_parser as profile_parser
from vpipe.runtime.cli import build_parser as train_parser

SCHEMA_VERSION = 1

# section -> its command's parser; in the order the steps run
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "profile": profile_parser,
    "plan": plan_parser,
    "gen": gen_parser,
    "train": train_parser,
}
# options vpipe-run sets itself (the files each step reads and writes), or that would make a
# step something other than its part of the run
RESERVED = {
    "profile": {"model", "output", "import_pipedream", "help"},
    "plan": {"profile", "output", "help"},
    "gen": {"plan", "output", "help"},
    "train": {"pipeline", "config", "report", "help"},
}
PATHS = {"plot", "checkpoint_dir"}  # options whose value is a path
TOP_LEVEL = ("schema_version", "model", "output", *PARSERS)

Value = bool | int | float | str | tuple[str, ...]


@dataclass(frozen=True)
class Option:
    """One option of one step: `name` as the parser's dest (`batch_size`)."""

    name: str
    value: Value


@dataclass(frozen=True)
class RunConfig:
    model: str  # a model file (as seen from here) or an importable module (vpipe.models.hf_bert)
    output: str  # the folder every step writes into (as seen from here)
    steps: tuple[tuple[str, tuple[Option, ...]], ...]  # (section, its options), in PARSERS order
    schema_version: int = SCHEMA_VERSION

    def options(self, section: str) -> tuple[Option, ...]:
        return dict(self.steps)[section]


def load_run_config(path: str | Path) -> RunConfig:
    """Read and check a run config: every field, before any step runs."""
    where = str(path)
    data = load_yaml(path, "run config")
    check_header(
        data,
        SCHEMA_VERSION,
        where,
        "run config",
        f"set `schema_version: {SCHEMA_VERSION}` and check the fields against docs/commands.md "
        "(vpipe-run)",
    )
    unknown = sorted(str(key) for key in data if key not in TOP_LEVEL)
    if unknown:
        raise VpipeError(
            f"{where}: unknown field {', '.join(unknown)}; known: {', '.join(TOP_LEVEL)}"
        )
    model = resolved_model(_text(data, "model", where), path)
    output = joined_path(_text(data, "output", where), path)
    if model != data["model"] or model.endswith(".py") or "/" in model:  # a file, not a module
        if not Path(model).is_file():
            raise VpipeError(f"{where}: model {data['model']}: no such file (relative to {where})")
    if Path(output).exists() and not Path(output).is_dir():
        raise VpipeError(f"{where}: output {data['output']} is a file; name a folder")
    return RunConfig(
        model=model,
        output=output,
        steps=tuple(
            (section, _section(data.get(section, {}), section, where)) for section in PARSERS
        ),
    )


def _text(data: Mapping[str, Any], key: str, where: str) -> str:
    if key not in data or data[key] in (None, ""):
        example = "vpipe.models.hf_bert" if key == "model" else "runs/bert"
        raise VpipeError(f"{where}: {key} is missing; add it, e.g. `{key}: {example}`")
    if not isinstance(data[key], str):
        raise VpipeError(f"{where}: {key} {data[key]!r}: must be a string")
    return data[key]


def _section(data: Any, section: str, where: str) -> tuple[Option, ...]:
    """A section's options, each checked against its command's parser."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise VpipeError(f"{where}: {section} must be a mapping of option: value")
    actions = {
        action.dest: action
        for action in PARSERS[section]()._actions
        if action.dest not in RESERVED[section]
    }
    options = []
    for key, value in data.items():
        field = f"{where}: {section}.{key}"
        if section == "train" and key == "resume":
            raise VpipeError(
                f"{field}: a vpipe-run generates the pipeline again, which replaces out/ and the "
                "checkpoints in it; resume with vpipe-train <output>/out/pipeline.yaml --resume"
            )
        if key not in actions:
            raise VpipeError(f"{field}: unknown option; {section} takes {', '.join(actions)}")
        value = _checked(actions[key], value, field)
        if key in PATHS and isinstance(value, str):  # a path option takes a string
            value = joined_path(value, where)
        options.append(Option(key, value))
    for dest, action in actions.items():
        if action.required and dest not in data:
            flag = action.option_strings[0]
            raise VpipeError(f"{where}: {section}.{dest} is missing ({flag}: {action.help})")
    return tuple(options)


# what a config value must be for an option of each argparse type (None: a string), and its name
KINDS: dict[object, tuple[tuple[type, ...], str]] = {
    int: ((int,), "a whole number"),
    float: ((int, float), "a number"),
    None: ((str,), "a string"),
}


def _checked(action: argparse.Action, value: Any, field: str) -> Value:
    """`value` if it is what `action` takes: a number, a flag, one of its choices, a list."""
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise VpipeError(f"{field} {value!r}: must be true or false")
        return value
    if isinstance(action, argparse._AppendAction):
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise VpipeError(f"{field} {value!r}: must be a list of names, e.g. [BertLayer]")
        return tuple(value)
    if action.choices is not None and value not in action.choices:
        raise VpipeError(f"{field} {value!r}: use one of {', '.join(action.choices)}")
    # the argparse types that check a range say what they take (common/cli.py)
    takes: object = getattr(action.type, "takes", action.type)
    kinds, kind = KINDS.get(takes, ((str, int, float), "a value"))
    if type(value) not in kinds:  # exact: YAML gives plain types, and true is no number
        raise VpipeError(f"{field} {value!r}: must be {kind}")
    return value
