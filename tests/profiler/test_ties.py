"""The profile's record of parameters several nodes use: found by tensor identity, saved and
loaded, checked, and older profiles (without it) sent back to vpipe-profile."""

from dataclasses import replace

import pytest
import torch
from torch import fx, nn

from vpipe.common.errors import VpipeError
from vpipe.profiler.schema import SCHEMA_VERSION, Profile, Tie
from vpipe.profiler.ties import find_ties

from ..planner.handmade import node, profile


class Shared(nn.Module):
    """An embedding tied to the output head and read directly too, and a frozen layer called
    twice."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.twice = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight
        self.twice.requires_grad_(False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.twice(self.twice(self.embed(tokens)))
        return self.head(x) + self.embed.weight.sum()


def test_ties_are_found_by_tensor_identity():
    ties = {t.names[0]: t for t in find_ties(fx.symbolic_trace(Shared()))}
    users = ("embed", "head", "embed_weight")  # modules, then a get_attr, in graph order
    assert ties["embed.weight"] == Tie(("embed.weight", "head.weight"), 10 * 4 * 4, True, users)
    assert ties["twice.weight"] == Tie(("twice.weight",), 4 * 4 * 4, False, ("twice", "twice_1"))
    assert ties["twice.bias"].bytes == 16
    assert len(ties) == 3


def hand_profile(ties):
    nodes = (node("x", (), 4), node("a", ("x",), 4, params=8), node("b", ("a",), 4))
    return replace(profile(("b",), nodes), ties=ties)


def test_ties_round_trip_and_are_checked():
    tie = Tie(("a.weight", "b.weight"), 8, True, ("a", "b"))
    profiled = hand_profile((tie,))
    assert Profile.from_dict(profiled.to_dict()).ties == (tie,)
    with pytest.raises(VpipeError, match="two or more users that are nodes"):
        hand_profile((Tie(("a.weight",), 8, True, ("a", "nowhere")),))


def test_a_profile_from_before_ties_says_to_profile_again():
    data = hand_profile(()).to_dict() | {"schema_version": 1}
    with pytest.raises(
        VpipeError, match=f"schema_version 1 is not {SCHEMA_VERSION}; re-run vpipe-profile"
    ):
        Profile.from_dict(data)
