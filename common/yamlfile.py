"""Reading and writing vpipe's YAML files: atomically, readably, with one-line errors."""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from vpipe.common.errors import VpipeError


class _Dumper(yaml.SafeDumper):
    """Writes lists of plain values (shapes, node names) on one line, so the file reads well."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flat = all(not isinstance(item, (dict, list)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def plain(value: Any) -> Any:
    """Dataclasses and tuples to the plain dicts and lists YAML writes; infinity as "inf" (YAML
    has no infinity literal every reader agrees on)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in asdict(value).items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


# a field only one kind of vpipe file has, and that kind (as `check_header` is told `what`)
KIND_KEYS = {
    "source_kind": "profile",
    "profile_sha256": "plan",
    "plan_sha256": "pipeline file",
    "peak_weight_versions": "stage log",
    "measure_memory": "run settings file",
}


def check_header(data: Any, version: int, where: str, what: str, remedy: str) -> None:
    """The first check of every vpipe file: a mapping, of this schema version (else `remedy`)."""
    if not isinstance(data, dict):
        raise VpipeError(f"{where}: not a vpipe {what} (expected a mapping at the top level)")
    kind = next((kind for key, kind in KIND_KEYS.items() if key in data), what)
    if kind != what:  # one file given for another: say so, whatever the versions
        raise VpipeError(f"{where} is a {kind}, not a {what}: give the {what}")
    if data.get("schema_version") != version:
        raise VpipeError(
            f"{where}: schema_version {data.get('schema_version')!r} is not {version}; {remedy}"
        )


def save_yaml(data: dict[str, Any], path: str | Path) -> None:
    """Write through a temporary file and rename it, so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100))
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise VpipeError(
            f"cannot write {path}: {err.strerror}; choose a writable path with -o"
        ) from None


# libyaml's parser when PyYAML has it: a 900-node profile reads in 0.3 s instead of 2 s
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]  # chosen at import
    """A safe loader that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently: `lr: 0.5` then `lr: 0.001` would train at 0.001 with no word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice", key_node.start_mark
                )
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file; `what` names it in errors ("profile", "plan")."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise VpipeError(f"cannot read {what} {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise VpipeError(
            f"{path} is not a text file; give a {what}.yaml written by vpipe"
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        # the problem and where, not PyYAML's first line ("while parsing a flow sequence")
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise VpipeError(f"{path} is not valid YAML: {problem}{where}") from None
