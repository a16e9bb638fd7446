"""codegen/partition.py: what each stage receives, computes and sends, worked out by hand on a
small graph with a skip connection over a stage, and the splits it refuses."""

import math

import pytest

from vpipe.codegen.partition import StageFlow, partition
from vpipe.common.errors import VpipeError
from vpipe.planner.schema import (
    MemoryBreakdown,
    Plan,
    PlanSettings,
    Prediction,
    SolverInfo,
    Stage,
    StagePrediction,
)

from ..planner.handmade import node, profile

#   x -> a -> b -> c -> d      (d and e are the model's outputs)
#         \_________/ \-> e    (d reads a too: a skip connection)
GRAPH = profile(
    ("d", "e"),
    (
        node("x", (), 16),
        node("a", ("x",), 16),
        node("b", ("a",), 16),
        node("c", ("b",), 16),
        node("d", ("c", "a"), 16),
        node("e", ("c",), 16),
    ),
)
NOTHING = StagePrediction(
    compute_ms=0.0,
    recompute_ms=0.0,
    comm_in_ms=0.0,
    comm_out_ms=0.0,
    time_ms=0.0,
    memory=MemoryBreakdown(params=0, stash=0, grads=0, optimizer=0, activations=0, transient=0),
    transfer_ms=0.0,
    allreduce_ms=0.0,
    delay_ms=0.0,
)


def split(*stages: tuple[tuple[str, ...], tuple[str, ...]]) -> Plan:
    """A plan of these (nodes, recomputed nodes) stages; its predictions are not read here."""
    return Plan(
        profile="hand.profile.yaml",
        profile_sha256="",
        batch_size=1,
        settings=PlanSettings(gpus=len(stages), memory_bytes=math.inf, bandwidth_gbps=math.inf),
        stages=tuple(
            Stage(index=k, nodes=nodes, recompute=recompute, replicas=1, predicted=NOTHING)
            for k, (nodes, recompute) in enumerate(stages)
        ),
        predicted=Prediction(
            time_per_minibatch_ms=0.0,
            throughput_samples_per_s=0.0,
            bottleneck_stage=0,
            bubble_fraction=0.0,
        ),
        baselines=(),
        solver=SolverInfo(name="dp", optimal=True, lower_bound_ms=0.0, cuts="all"),
    )


def test_each_stage_receives_and_sends_what_crosses_its_cuts():
    """a is made on stage 0 and read on stage 2: stage 1 receives it and sends it on. c, made
    on stage 1, goes to stage 2. The last stage sends the model's outputs, in their order."""
    flows = partition(GRAPH, split((("x", "a"), ()), (("b", "c"), ()), (("e", "d"), ())))
    assert flows == (
        StageFlow(0, ("x", "a"), ("x",), (), ("a",), ()),
        StageFlow(1, ("b", "c"), (), ("a",), ("a", "c"), ()),
        # the plan's order (e, d) is not the profile's: a stage runs in the profile's order
        StageFlow(2, ("d", "e"), (), ("a", "c"), ("d", "e"), ()),
    )
    assert flows[0].inputs == ("x",)  # batch inputs first, then what is received
    assert flows[2].inputs == ("a", "c")


def test_recomputed_runs_are_segments_in_the_stages_order():
    """On one stage of b, c, d, e recomputing b, d and e: d and e are one run, b another."""
    (first, second) = partition(
        GRAPH, split((("x", "a"), ()), (("b", "c", "d", "e"), ("e", "b", "d")))
    )
    assert second.segments == (("b",), ("d", "e"))
    assert first.segments == ()
    assert (second.received, second.sent) == (("a",), ("d", "e"))


@pytest.mark.parametrize(
    "stages, message",
    [
        (
            ((("x", "b"), ()), (("a", "c", "d", "e"), ())),
            "plan: node 'b' on stage 0 reads 'a' from the later stage 1; a split must send "
            "values forward only: re-run vpipe-plan",
        ),
        (
            ((("x", "a", "b"), ()), (("c", "d"), ())),
            "plan places no stage on nodes e; it does not belong to this profile",
        ),
        (
            ((("x", "a", "b"), ()), (("c", "d", "e", "f"), ())),
            "plan names nodes the profile does not have: f; it does not belong to this profile",
        ),
    ],
)
def test_a_split_that_is_not_of_this_profile_is_refused(stages, message):
    with pytest.raises(VpipeError) as err:
        partition(GRAPH, split(*stages))
    assert str(err.value).startswith(message), err.value
