"""The replicas' schedules (common/replicas.py), without processes: a straight stage runs its old
actions, every small shape of replicas can run to the end holding what the planner counts, the
check finds a schedule that cannot, and a resume from a checkpoint continues each replica where
it stood."""

import itertools

import pytest

from vpipe.common.replicas import (
    _simulate,
    asp_reach,
    refilled,
    replica_actions,
    replica_resumed,
    run_lengths,
    update_microbatches,
    validate_replicas,
)
from vpipe.common.schedules import (
    BACKWARD,
    FORWARD,
    Action,
    peak_in_flight,
    replica_in_flight,
    stage_actions,
)


@pytest.mark.parametrize("name", ["asp", "1f1b", "gpipe"])
def test_one_replica_is_the_straight_stage(name):
    for stages, microbatches in itertools.product(range(1, 6), range(1, 7)):
        for stage in range(stages):
            straight = list(stage_actions(name, stages, microbatches, 5, stage))
            replica = list(replica_actions(name, microbatches, 5, 1, stages - stage, 0))
            assert replica == straight, (stages, microbatches, stage)


@pytest.mark.parametrize("name", ["asp", "1f1b", "gpipe"])
def test_every_small_shape_runs_to_the_end(name):
    """Every shape of up to 4 stages of 1-3 replicas, and every M from the most replicas to 6:
    each replica runs its own micro-batches once, within `replica_in_flight`, and under asp
    reaches that count (the planner counts no more than a replica holds)."""
    for stages in range(1, 5):
        for replicas in itertools.product(range(1, 4), repeat=stages):
            steps = 4 * run_lengths(name, replicas) if name == "asp" else 3
            for microbatches in [1] if name == "asp" else range(max(replicas), 7):
                validate_replicas(name, replicas, microbatches, steps)
                if name != "asp":
                    continue
                for s, r in enumerate(replicas):
                    workers = sum(replicas[s:])
                    plan = list(replica_actions(name, 1, 8 * steps, r, workers, 0))
                    assert peak_in_flight(plan) == replica_in_flight(name, 1, r, workers)


def test_the_2x2_asp_schedule():
    """The module docstring's table."""
    shown = [
        " ".join(map(str, list(replica_actions("asp", 1, 12, 2, workers, i))[:7]))
        for workers, i in ((4, 0), (4, 1), (2, 0), (2, 1))
    ]
    assert shown == [
        "F0 F2 B0 F4 B2 F6 B4",
        "F1 F3 B1 F5 B3 F7 B5",
        "F0 B0 F2 B2 F4 B4 F6",
        "F1 B1 F3 B3 F5 B5 F7",
    ]


def test_updates_sum_the_kth_backwards_under_asp_and_the_step_otherwise():
    assert update_microbatches("asp", 1, 3, 7) == range(6, 9)
    assert update_microbatches("1f1b", 4, 2, 6) == range(4, 8)


def test_a_replica_waiting_out_of_order_is_found():
    """Replica 1 of a one-stage pipeline runs B3 before B1: its first update is the one with
    micro-batch 2, which replica 0 reaches only after the update with micro-batch 1."""
    plans = {
        (0, 0): [Action(FORWARD, 0), Action(BACKWARD, 0), Action(FORWARD, 2), Action(BACKWARD, 2)],
        (0, 1): [Action(FORWARD, 1), Action(FORWARD, 3), Action(BACKWARD, 3), Action(BACKWARD, 1)],
    }
    with pytest.raises(ValueError, match="cannot proceed: stage 0 replica 0 at F2 .in its update"):
        _simulate("asp", [2], 1, plans)


def _at_checkpoint(plan, done, replicas, replica):
    """A replica's actions up to a checkpoint after micro-batches 0 .. done - 1, and what it
    resumes with; checked: the first part has the backwards of exactly its micro-batches below
    `done`. The micro-batches it holds in flight there."""
    left = list(replica_resumed(plan, done, replicas, replica))
    ran = plan[: len(plan) - len(left)]
    assert ran + left == plan
    backwards = [a.microbatch for a in ran if a.kind == BACKWARD]
    assert sorted(backwards) == list(range(replica, done, replicas))
    return {a.microbatch for a in ran if a.kind == FORWARD} - set(backwards)


@pytest.mark.parametrize("name", ["1f1b", "gpipe"])
def test_a_sync_replica_resumes_after_its_steps_with_nothing_in_flight(name):
    for replicas in itertools.product(range(1, 4), repeat=2):
        for microbatches in range(max(replicas), 6):
            for s, r in enumerate(replicas):
                for i in range(r):
                    plan = list(replica_actions(name, microbatches, 4, r, sum(replicas[s:]), i))
                    for step in range(4):
                        assert not _at_checkpoint(plan, step * microbatches, r, i)


def test_an_asp_replica_resumes_where_it_stood():
    """Every shape of up to 3 stages of 1-3 replicas, at every checkpoint a run of 6 lcm steps
    can take: a stage's replicas hold micro-batches n .. n + r (d - 1) - 1 in flight (which
    `restore` replays), a run shorter than n + `asp_reach` is the one whose checkpoint holds
    fewer than a longer run's (it drained), and `refilled` from n is a run from 0 moved by n."""
    for stages in range(1, 4):
        for replicas in itertools.product(range(1, 4), repeat=stages):
            every = run_lengths("asp", replicas)
            steps = 6 * every
            reach = asp_reach(replicas)
            for done in range(every, steps, every):
                drained = False
                for s, r in enumerate(replicas):
                    workers = sum(replicas[s:])
                    held, unbroken = set(), set()
                    for i in range(r):
                        plan = list(replica_actions("asp", 1, steps, r, workers, i))
                        held |= _at_checkpoint(plan, done, r, i)
                        longer = list(replica_actions("asp", 1, 10 * steps, r, workers, i))
                        unbroken |= _at_checkpoint(longer, done, r, i)
                        shifted = replica_actions("asp", 1, steps - done, r, workers, i)
                        moved = [Action(a.kind, a.microbatch + done) for a in shifted]
                        assert list(refilled(steps, r, workers, i, done)) == moved
                    depth = replica_in_flight("asp", 1, r, workers)
                    assert unbroken == set(range(done, done + r * (depth - 1)))
                    assert held == {m for m in unbroken if m < steps}
                    drained |= held != unbroken
                assert drained == (done + reach > steps), (replicas, done)
