"""Tied parameters in a plan: the copies a stage holds cost it memory (worked out by hand), the
asp update order can neither deadlock nor, with even stages, wait, and the printout says what
the plan does with each tie."""

import math
from dataclasses import replace

import pytest

from vpipe.common.schedules import BACKWARD, FORWARD, run_actions, tied_delay, validate
from vpipe.planner.costmodel import evaluate_stage
from vpipe.planner.dp import solve_dp
from vpipe.planner.graph import plan_graph
from vpipe.planner.planning import planned_ties
from vpipe.planner.report import tie_line
from vpipe.profiler.schema import Tie

from .handmade import PROFILE, SETTINGS

# the worked example of test_costmodel, with a 600 B parameter that n1 (its owner, charged for
# it) and n3 share
TIED = replace(
    PROFILE,
    nodes=tuple(
        replace(n, param_bytes=1600, grad_bytes=1600) if n.name == "n1" else n
        for n in PROFILE.nodes
    ),
    ties=(Tie(("n1.weight", "n3.weight"), 600, True, ("n1", "n3")),),
)
SPLIT = ([0, 1], [2, 3], [4, 5])


def test_a_stage_holding_a_tied_copy_pays_for_it_by_hand():
    graph = plan_graph(TIED)
    first = evaluate_stage(graph, SETTINGS, 0, [], SPLIT[0], ()).memory
    second = evaluate_stage(graph, SETTINGS, 1, SPLIT[0], SPLIT[1], ()).memory
    # stage 0 owns it (in n1's 1600 B): 3 versions, a gradient, Adam's two moments
    assert (first.params, first.stash, first.grads, first.optimizer) == (1600, 3200, 1600, 3200)
    # stage 1 holds a copy beside n3's own 400 B: under asp 2 versions, so one stashed, a
    # gradient, Adam's two moments: 600 + 600 + 600 + 1200 = 3000 B more than without the tie
    assert (second.params, second.stash, second.grads, second.optimizer) == (
        400 + 600,
        400 + 600,
        400 + 600,
        800 + 1200,
    )
    untied = evaluate_stage(plan_graph(PROFILE), SETTINGS, 1, SPLIT[0], SPLIT[1], ()).memory
    assert second.total == untied.total + 3000
    # one stage holding both users holds one tensor
    whole = evaluate_stage(graph, replace(SETTINGS, gpus=1), 0, [], range(6), ()).memory
    assert whole.params == 1600 + 400 + 200


def test_planned_ties_and_the_printout():
    graph = plan_graph(TIED)
    (across,) = planned_ties(graph, SPLIT)
    assert across.stages == (0, 1)
    assert tie_line(across, "asp") == (
        "tie n1.weight / n3.weight: copies on stages 0 and 1, kept equal by summing their "
        "gradients (asp: owner stage 0 applies update i first, stage 1 before its update of "
        "micro-batch i + 1)"
    )
    assert "all-reduce before each update" in tie_line(across, "1f1b")
    (alone,) = planned_ties(graph, ([0, 1, 2, 3], [4, 5]))
    assert tie_line(alone, "asp") == "tie n1.weight / n3.weight: on one stage (0), one tensor"


def _update_waits(stages, owner, holder, fwd, bwd, steps=12):
    """How long holder's updates wait for the owner's sums in all, when every forward takes
    `fwd`, every backward `bwd`, messages are free, and each action starts once its stage and
    its inputs are ready."""
    actions = run_actions("asp", stages, 1, steps)
    delay = tied_delay(owner, holder)
    end: dict[tuple[int, str, int], float] = {}
    position, clock, waited = [0] * stages, [0.0] * stages, 0.0
    while any(p < len(a) for p, a in zip(position, actions, strict=True)):
        progressed = False
        for s in range(stages):
            while position[s] < len(actions[s]):
                action = actions[s][position[s]]
                i = action.microbatch
                if action.kind == FORWARD:
                    needs = [(s - 1, FORWARD, i)] if s else []
                else:
                    needs = [(s + 1, BACKWARD, i)] if s < stages - 1 else []
                tied = action.kind == BACKWARD and s == holder and i >= delay
                summed = (owner, BACKWARD, i - delay)
                if any(n not in end for n in needs) or (tied and summed not in end):
                    break
                done = max([clock[s], *(end[n] for n in needs)])
                done += fwd if action.kind == FORWARD else bwd
                if tied:  # the update after this backward applies the owner's update i - delay
                    waited += max(0.0, end[summed] - done)
                    done = max(done, end[summed])
                end[s, action.kind, i] = clock[s] = done
                position[s] += 1
                progressed = True
        assert progressed, "deadlock"
    return waited


@pytest.mark.parametrize("stages", range(2, 7))
def test_the_asp_delay_never_deadlocks_and_even_stages_never_wait(stages):
    for owner in range(stages):
        for holder in range(owner + 1, stages):
            validate("asp", run_actions("asp", stages, 1, 2 * stages + 2), 1, [(owner, holder)])
            for fwd, bwd in ((1.0, 1.0), (1.0, 2.0), (1.0, 3.0)):
                assert _update_waits(stages, owner, holder, fwd, bwd) == 0


def test_validate_catches_a_tie_that_waits_on_its_own_future(monkeypatch):
    """With no delay the holder's update i would need the owner's update i, which needs the
    holder's gradient of i, sent after that update: `validate` must refuse it."""
    monkeypatch.setattr("vpipe.common.schedules.tied_delay", lambda owner, holder: 0)
    with pytest.raises(ValueError, match="cannot proceed"):
        validate("asp", run_actions("asp", 2, 1, 4), 1, [(0, 1)])


def test_no_tie_leaves_the_plan_unchanged():
    graph = plan_graph(PROFILE)
    assert graph.ties == () and planned_ties(graph, SPLIT) == ()
    assert math.isfinite(solve_dp(graph, SETTINGS).bottleneck_ms)
