"""`decode`: typed records from YAML values, each field checked, each error naming its path."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pytest

from vpipe.common.errors import VpipeError
from vpipe.common.records import Bytes, Limit, Millis, Positive, decode


@dataclass(frozen=True)
class Tensor:
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Item:
    name: str
    size: Bytes
    time: Millis
    tensors: tuple[Tensor, ...] = ()
    pair: tuple[int, str] | None = None
    flag: bool = False
    pace: Literal["fast", "slow"] = "fast"


@dataclass(frozen=True)
class Top:
    count: Positive
    cap: Limit
    items: tuple[Item, ...]

    def __post_init__(self) -> None:
        if len(self.items) > 3:
            raise VpipeError("at most 3 items")


GOOD = {
    "count": 2,
    "cap": "inf",
    "items": [
        {"name": "a", "size": 0, "time": 1, "tensors": [{"shape": [2, 3], "dtype": "f"}]},
        {"name": "b", "size": 5, "time": 0.5, "pair": [1, "x"], "flag": True, "pace": "slow"},
    ],
}


def test_a_good_file_decodes_to_the_records_by_hand():
    top = decode(Top, GOOD, "f.yaml", "thing", "rewrite it")
    assert top == Top(
        count=2,
        cap=math.inf,
        items=(
            Item("a", 0, 1.0, (Tensor((2, 3), "f"),)),
            Item("b", 5, 0.5, pair=(1, "x"), flag=True, pace="slow"),
        ),
    )
    assert isinstance(top.items[0].time, float)  # 1 in a float field is the float 1.0


def _with(path: tuple, value: object) -> dict:
    data = {**GOOD, "items": [dict(item) for item in GOOD["items"]]}
    target: dict = data
    for step in path[:-1]:
        target = target[step]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("count",), "2", "count: expected a whole number, got '2' (str)"),
        (("count",), True, "count: expected a whole number, got True (bool)"),
        (("count",), 0, "count: 0 is below 1"),
        (("cap",), -1.0, "cap: -1.0 is below 0"),
        (("cap",), math.nan, "cap: nan is not a finite number"),
        (("items", 1, "time"), math.inf, "items[1].time: inf is not a finite number"),
        (("items", 1, "time"), "inf", "items[1].time: expected a number, got 'inf' (str)"),
        (("items", 0, "size"), 1.5, "items[0].size: expected a whole number, got 1.5 (float)"),
        (("items", 0, "name"), 7, "items[0].name: expected text, got 7 (int)"),
        (("items", 1, "flag"), "yes", "items[1].flag: expected true or false, got 'yes'"),
        (("items", 1, "pace"), "brisk", "items[1].pace: 'brisk' (str) is not one of fast, slow"),
        (("items", 1, "pace"), ["fast"], "items[1].pace: ['fast'] (list) is not one of fast"),
        (("items", 1, "pair"), [1], "items[1].pair: expected 2 items, got 1"),
        (("items", 1, "pair"), [1, 2], "items[1].pair[1]: expected text, got 2 (int)"),
        (("items", 0, "tensors"), {"shape": []}, "items[0].tensors: expected a list, got {"),
        (("items", 0, "size"), KeyError, "items[0]: missing field size"),
        (("items", 0, "colour"), "red", "items[0]: unknown field colour"),
        (("items",), [1], "items[0]: expected a mapping of fields, got 1 (int)"),
        (("items",), [GOOD["items"][0]] * 4, "at most 3 items"),
    ],
)
def test_each_wrong_field_is_one_error_naming_it(path, value, message):
    with pytest.raises(VpipeError) as err:
        decode(Top, _with(path, value), "f.yaml", "thing", "rewrite it")
    text = str(err.value)
    assert text.startswith(f"f.yaml: not a valid thing: {message}"), text
    assert text.endswith("; rewrite it") and "\n" not in text, text


def test_a_file_that_is_no_mapping():
    with pytest.raises(VpipeError, match=r"f.yaml: not a valid thing: expected a mapping"):
        decode(Top, ["count"], "f.yaml", "thing", "rewrite it")
