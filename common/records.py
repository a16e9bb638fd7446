"""Typed records from the plain values of a YAML file, every field checked on the way in.

Each of vpipe's files is a tree of frozen dataclasses; `decode` builds one from what the YAML
parser gave, walking the dataclass's type hints. A field of the wrong kind, out of its range,
missing or unknown is one error naming the file and the field's path
(`stages[1].predicted.memory.params`), never a TypeError deep in the planner or a string batch
size that trains. Ranges are declared on the type (`Bytes`, `Millis`), so the rule sits beside
the field it governs and the writer and the reader share it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from vpipe.common.errors import VpipeError

T = TypeVar("T")


@dataclass(frozen=True)
class AtLeast:
    """The least value a number field may take."""

    bound: float


@dataclass(frozen=True)
class MayBeInfinite:
    """A float field where infinity means "no limit" (YAML writes it as the string "inf")."""


Count = Annotated[int, AtLeast(0)]
Bytes = Annotated[int, AtLeast(0)]
Millis = Annotated[float, AtLeast(0)]
Positive = Annotated[int, AtLeast(1)]
NonNegative = Annotated[float, AtLeast(0)]
Limit = Annotated[float, AtLeast(0), MayBeInfinite()]  # a cap, where inf means none


class FieldError(Exception):
    """One field is wrong; `path` leads to it from the top of the file."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)


def decode(cls: type[T], data: Any, where: str, what: str, remedy: str) -> T:
    """`data` as a `cls`, or one VpipeError: `where` (the file) is not a valid `what`, the field
    and its problem, and `remedy` (the command that writes a good file)."""
    try:
        return _value(cls, data, "")
    except (FieldError, VpipeError, ValueError) as err:  # ours, or a record's __post_init__
        raise VpipeError(f"{where}: not a valid {what}: {err}; {remedy}") from None


def _value(hint: Any, data: Any, path: str) -> Any:
    if typing.get_origin(hint) is Annotated:
        kind, *rules = typing.get_args(hint)
        if MayBeInfinite() in rules and data in ("inf", math.inf):
            return math.inf
        value = _value(kind, data, path)
        for rule in rules:
            if isinstance(rule, AtLeast) and value is not None and value < rule.bound:
                raise FieldError(path, f"{value} is below {rule.bound:g}")
        return value
    if dataclasses.is_dataclass(hint):
        return _record(hint, data, path)  # type: ignore[arg-type]
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if data is None and type(None) in options:
            return None
        (kind,) = [o for o in options if o is not type(None)]
        return _value(kind, data, path)
    if origin is tuple:
        return _tuple(typing.get_args(hint), data, path)
    if origin is Literal:
        named = typing.get_args(hint)  # the values it may take: names, in vpipe's files
        if data not in named:
            raise FieldError(path, f"{_shown(data)} is not one of {', '.join(map(str, named))}")
        return data
    return _scalar(hint, data, path)


def _record(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, Mapping):
        raise FieldError(path, f"expected a mapping of fields, got {_shown(data)}")
    wanted = [f for f in dataclasses.fields(cls) if f.init]
    names = {f.name for f in wanted}
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise FieldError(path, f"unknown field {', '.join(unknown)}")
    missing = [f.name for f in wanted if f.name not in data and _required(f)]
    if missing:
        raise FieldError(path, f"missing field {', '.join(missing)}")
    hints = _hints(cls)
    return cls(
        **{
            f.name: _value(hints[f.name], data[f.name], f"{path}.{f.name}" if path else f.name)
            for f in wanted
            if f.name in data
        }
    )


def _tuple(args: tuple[Any, ...], data: Any, path: str) -> tuple[Any, ...]:
    if not isinstance(data, (list, tuple)):
        raise FieldError(path, f"expected a list, got {_shown(data)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_value(args[0], item, f"{path}[{i}]") for i, item in enumerate(data))
    if len(data) != len(args):
        raise FieldError(path, f"expected {len(args)} items, got {len(data)}")
    pairs = enumerate(zip(args, data, strict=True))
    return tuple(_value(kind, item, f"{path}[{i}]") for i, (kind, item) in pairs)


def _scalar(kind: Any, data: Any, path: str) -> Any:
    if kind is Any:
        return data
    if kind is float:
        if not isinstance(data, (int, float)) or isinstance(data, bool):
            raise FieldError(path, f"expected a number, got {_shown(data)}")
        if not math.isfinite(data):
            raise FieldError(path, f"{data} is not a finite number")
        return float(data)
    if kind is int and (not isinstance(data, int) or isinstance(data, bool)):
        raise FieldError(path, f"expected a whole number, got {_shown(data)}")
    if kind is bool and not isinstance(data, bool):
        raise FieldError(path, f"expected true or false, got {_shown(data)}")
    if kind is str and not isinstance(data, str):
        raise FieldError(path, f"expected text, got {_shown(data)}")
    return data


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _shown(data: Any) -> str:
    text = repr(data)
    return f"{text[:40]}{'...' if len(text) > 40 else ''} ({type(data).__name__})"
