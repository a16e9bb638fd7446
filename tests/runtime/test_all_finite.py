"""The guard's finiteness check against torch.isfinite over every value: one bad value at a
time, first, in the middle and last, of each kind."""

import math

import pytest
import torch

from vpipe.common.optim import all_finite


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", [(0, 0), (31, 7), (63, 15)])
def test_one_bad_value_is_found_wherever_it_is(bad, where):
    grads = {"w": torch.randn(64, 16), "b": torch.randn(16), "empty": torch.empty(0)}
    assert all_finite(grads)
    grads["w"][where] = bad
    assert not all_finite(grads)
    assert all_finite(grads) == all(bool(torch.isfinite(g).all()) for g in grads.values())


def test_a_lone_value_and_no_gradients():
    assert all_finite({})
    assert not all_finite({"x": torch.tensor([math.nan])})
    assert all_finite({"x": torch.tensor([3.0e38]), "y": torch.tensor([-3.0e38])})  # finite
