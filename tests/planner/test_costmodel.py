"""A 3-stage example whose every memory figure is worked out by hand (asp, Adam, S = 3)."""

import math
from dataclasses import replace

import pytest

from vpipe.common.errors import VpipeError
from vpipe.planner.costmodel import evaluate_stage
from vpipe.planner.graph import plan_graph
from vpipe.planner.planning import graph_for
from vpipe.profiler.schema import LinkCost, TensorMeta

from .handmade import PROFILE, SETTINGS, chain_profile


def test_three_stage_breakdown_by_hand():
    graph = plan_graph(PROFILE)
    first = evaluate_stage(graph, SETTINGS, 0, [], [0, 1], ()).memory
    # stage 0 of 3: 3 weight versions, 3 mini-batches in flight, each keeping n0 (100 B, n1
    # keeps it) and n1's output (200 B, sent: the backward's root). Links: the gradient being
    # received and the next one posted (2 x 200 B); its two pending sends share n1's output.
    # n1's backward peak: 300 B
    assert (first.params, first.stash, first.grads, first.optimizer) == (1000, 2000, 1000, 2000)
    assert (first.activations, first.buffers, first.transient) == (3 * (100 + 200), 400, 300)
    assert first.total == 6000 + 900 + 400 + 300

    second = evaluate_stage(graph, SETTINGS, 1, [0, 1], [2, 3], [2]).memory
    # stage 1: 2 versions, 2 in flight. n2 is recomputed, so it no longer keeps its output,
    # but n3 keeps it (200 B); n3's output is sent (50 B), n1's received (200 B). Links: one
    # receive posted ahead (200 B), 2 gradients (2 x 50 B), and two pending sends, one of
    # each: n3's copy (strided: 50 B) and a gradient for stage 0 (200 B). Rebuilding n2 in
    # backward materialises its output once (200 B), and n2's backward holds 400 B at most.
    assert (second.params, second.stash, second.grads, second.optimizer) == (400, 400, 400, 800)
    assert second.activations == 2 * (200 + 50 + 200)
    assert (second.buffers, second.transient) == (200 + 2 * 50 + 50 + 200, 200 + 400)
    assert second.total == 2000 + 900 + 550 + 600

    third = evaluate_stage(graph, SETTINGS, 2, [0, 1, 2, 3], [4, 5], ()).memory
    # last stage: 1 version, 1 in flight; n4's own 30 B, n5 keeps n4 (50 B), n3 received (50 B);
    # links: one receive ahead and two gradient sends pending (3 x 50 B)
    assert (third.params, third.stash, third.grads, third.optimizer) == (200, 0, 200, 400)
    assert (third.activations, third.buffers, third.transient) == (30 + 50 + 50, 3 * 50, 20)
    assert third.total == 800 + 130 + 150 + 20


def test_a_sent_tensor_the_stage_keeps_anyway_counts_once():
    graph = plan_graph(PROFILE)
    # n2 (relu) keeps its output, which it also sends: n0 (100 B) and n2's output (200 B)
    memory = evaluate_stage(graph, SETTINGS, 0, [], [0, 1, 2], ()).memory
    assert memory.activations == 3 * (100 + 200)


def test_sync_schedules_hold_the_running_gradient_sum_beside_the_micro_batch_gradients():
    graph = plan_graph(PROFILE)
    # one micro-batch too: the runtime's sum is a copy of the first gradients (runtime/executor)
    for schedule, microbatches, copies in (("1f1b", 4, 2), ("gpipe", 4, 2), ("1f1b", 1, 2)):
        settings = replace(SETTINGS, schedule=schedule, microbatches=microbatches)
        memory = evaluate_stage(graph, settings, 0, [], [0, 1], ()).memory
        assert (memory.grads, memory.stash) == (copies * 1000, 0)


def test_times_and_recompute_cost():
    graph = plan_graph(PROFILE)
    second = evaluate_stage(graph, SETTINGS, 1, [0, 1], [2, 3], [2])
    assert second.compute_ms == 2 * 3.0 + 1.0  # two nodes' forward + backward, n2 forward again
    assert second.recompute_ms == 1.0 and second.time_ms == second.compute_ms


def test_gradient_work_counts_per_micro_batch_under_asp_and_per_m_otherwise():
    """The optimizer step once per micro-batch under asp, once per M otherwise; adding the
    gradients into the step's running sum every micro-batch, under 1f1b and gpipe only."""
    timed = replace(
        PROFILE,
        nodes=tuple(
            replace(n, update_ms=0.5, accumulate_ms=0.25) if n.param_bytes else n
            for n in PROFILE.nodes
        ),
    )
    asp = graph_for(timed, replace(SETTINGS, schedule="asp"))
    sync = graph_for(timed, replace(SETTINGS, schedule="1f1b", microbatches=4))
    assert (asp.bwd_ms[1], sync.bwd_ms[1]) == (2.0 + 0.5, 2.0 + 0.5 / 4 + 0.25)  # n1: a linear
    assert asp.bwd_ms[2] == sync.bwd_ms[2] == 2.0  # n2: no weights, no step


def test_each_end_of_a_cut_pays_the_cpu_work_of_its_transfers():
    # 0.5 ms a message and 1 ms per 100 B: stage 1 receives n1 (200 B) and sends its gradient
    # back (two messages, 400 B: 1 + 4 ms), and sends n3 (50 B) and takes its gradient (two
    # messages, 100 B: 1 + 1 ms); its neighbours pay their ends of the same cuts
    graph = plan_graph(replace(PROFILE, link=LinkCost("gloo", 0.5, 2**20 / 100)))
    first = evaluate_stage(graph, SETTINGS, 0, [], [0, 1], ())
    second = evaluate_stage(graph, SETTINGS, 1, [0, 1], [2, 3], [2])
    third = evaluate_stage(graph, SETTINGS, 2, [0, 1, 2, 3], [4, 5], ())
    assert [p.transfer_ms for p in (first, second, third)] == pytest.approx([5.0, 7.0, 2.0])
    assert second.compute_ms == pytest.approx(2 * 3.0 + 1.0 + 7.0)
    assert second.time_ms == second.compute_ms
    without = evaluate_stage(plan_graph(PROFILE), SETTINGS, 1, [0, 1], [2, 3], [2])
    assert without.transfer_ms == 0.0 and without.compute_ms == 7.0


def test_a_tensor_without_gradient_crosses_once():
    tokens = replace(PROFILE.nodes[0], outputs=(TensorMeta((25,), "int64"),))
    profile = replace(PROFILE, nodes=(tokens, *PROFILE.nodes[1:]), link=LinkCost("gloo", 0.5, 0.0))
    graph = plan_graph(profile)
    assert (graph.link_ms[0], graph.link_ms[1]) == (0.5, 1.0)  # int64: no gradient comes back


def test_message_ms_replaces_the_profiles_cost_per_message_and_keeps_its_cost_per_byte():
    # the same cuts as above at 2 ms a message (vpipe-probe's figure) instead of 0.5: stage 1
    # pays 4 messages (8 ms) and 500 B (5 ms), stage 0 two and 400 B, stage 2 two and 100 B
    profile = replace(PROFILE, link=LinkCost("gloo", 0.5, 2**20 / 100))
    settings = replace(SETTINGS, message_ms=2.0)
    graph = graph_for(profile, settings)
    stages = [([], [0, 1]), ([0, 1], [2, 3]), ([0, 1, 2, 3], [4, 5])]
    transfers = [
        evaluate_stage(graph, settings, k, b, s, ()).transfer_ms for k, (b, s) in enumerate(stages)
    ]
    assert transfers == pytest.approx([4.0 + 4.0, 8.0 + 5.0, 4.0 + 1.0])
    assert (
        graph_for(profile, SETTINGS).link_ms == plan_graph(profile).link_ms
    )  # default: the profile's


def test_message_ms_is_refused_where_transfers_take_no_compute_time():
    with pytest.raises(VpipeError, match="no link cost"):
        graph_for(PROFILE, replace(SETTINGS, message_ms=0.1))  # PROFILE: link None (a GPU's)


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan])
def test_message_ms_must_be_a_finite_cost(bad):
    with pytest.raises(VpipeError, match="--message-ms"):
        replace(SETTINGS, message_ms=bad)


def test_a_cuts_delay_is_the_latency_and_the_receiving_ends_copies_one_way():
    # stage 0 of the example above sends n1's 200 B (a float: its gradient comes back, 400 B
    # moved) at 0.5 ms a message and 1 ms per 100 B: link work 2 x 0.5 + 4 ms each end, of
    # which the copies are 4 ms. One way: the receiving end's per-message share stands for the
    # latency (0.5 ms) unless --latency-ms gives it, plus half the copies (2 ms); no wire
    profile = replace(PROFILE, link=LinkCost("gloo", 0.5, 2**20 / 100))
    graph = graph_for(profile, SETTINGS)
    assert evaluate_stage(graph, SETTINGS, 0, [], [0, 1], ()).delay_ms == pytest.approx(0.5 + 2.0)
    measured = replace(SETTINGS, latency_ms=0.07)
    assert evaluate_stage(graph, measured, 0, [], [0, 1], ()).delay_ms == pytest.approx(0.07 + 2.0)
    last = evaluate_stage(graph, measured, 2, [0, 1, 2, 3], [4, 5], ())
    assert last.delay_ms == 0.0  # no cut after the last stage


def test_the_latency_waits_on_the_chain_but_costs_no_stage_time():
    profile = replace(PROFILE, link=LinkCost("gloo", 0.5, 0.0))
    graph = graph_for(profile, SETTINGS)
    slow, fast = (replace(SETTINGS, latency_ms=ms) for ms in (1.0, 0.0))
    first = [evaluate_stage(graph, s, 0, [], [0, 1], ()) for s in (slow, fast)]
    assert first[0].time_ms == first[1].time_ms and first[0].transfer_ms == first[1].transfer_ms
    assert (first[0].delay_ms, first[1].delay_ms) == (1.0, 0.0)


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan])
def test_latency_ms_must_be_a_finite_time(bad):
    with pytest.raises(VpipeError, match="--latency-ms"):
        replace(SETTINGS, latency_ms=bad)


def test_every_stage_pays_the_update_and_accumulation_calls_once_per_their_rate():
    """A chain of 1 ms forwards (3 ms of work a node), calls of 0.8 ms (update) and 0.2 ms
    (accumulation): under asp each of 3 stages pays 0.8 per micro-batch, the first and the
    last as the middle one, whatever it holds; under 1f1b with 4 micro-batches 0.8 / 4 + 0.2.
    None of it is link work (`transfer_ms`)."""
    calls = replace(chain_profile(1.0, 1.0, 1.0, 1.0), update_call_ms=0.8, accumulate_call_ms=0.2)
    splits = ([0, 1], [2, 3], [4])
    for schedule, microbatches, per_stage in (("asp", 1, 0.8), ("1f1b", 4, 0.8 / 4 + 0.2)):
        settings = replace(SETTINGS, schedule=schedule, microbatches=microbatches)
        graph = plan_graph(calls, schedule=schedule, microbatches=microbatches)
        before: list[int] = []
        for index, stage in enumerate(splits):
            predicted = evaluate_stage(graph, settings, index, before, stage, ())
            before += stage
            work = 3.0 * sum(n > 0 for n in stage)  # n0, the input, does no work
            assert predicted.compute_ms == pytest.approx(work + per_stage), (schedule, index)
            assert predicted.transfer_ms == 0.0
