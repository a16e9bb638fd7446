"""The loss is planned as one more node: on the last stage, with the model's output, never
recomputed, absent from plan files, its time and bytes in the last stage's prediction."""

import pytest

from vpipe.planner.costmodel import kept_bytes
from vpipe.planner.graph import plan_graph
from vpipe.planner.schema import load_plan
from vpipe.profiler.schema import LOSS_NODE, load_profile

from ..codegen.pipelines import plan, profile


def test_the_loss_runs_on_the_last_stage(tmp_path):
    profiled = profile("mlp", tmp_path)
    measured = load_profile(profiled)
    graph = plan_graph(measured)
    assert graph.loss == graph.size - 1 and graph.names[graph.loss] == LOSS_NODE
    assert graph.loss in graph.never_recomputed

    planned = load_plan(plan(profiled, 3, tmp_path, False))
    names = [n for stage in planned.stages for n in stage.nodes]
    assert sorted(names) == sorted(n.name for n in measured.nodes)  # the model's nodes only
    last = planned.stages[-1]
    assert measured.outputs[0] in last.nodes
    # asp: each node's optimizer step once per micro-batch
    own_ms = sum(measured.node(n).compute_ms + measured.node(n).update_ms for n in last.nodes)
    # and making the batch again, for the target
    loss_ms = measured.loss.compute_ms + measured.batch_ms
    assert measured.batch_ms > 0
    # and its end of the transfers from the stage before
    transfer_ms = last.predicted.transfer_ms
    assert transfer_ms > 0
    # and the update call every stage pays after each backward, whichever weights it holds
    call_ms = measured.update_call_ms
    assert call_ms > 0
    assert last.predicted.compute_ms == pytest.approx(own_ms + loss_ms + transfer_ms + call_ms)
    first = planned.stages[0]
    first_ms = sum(measured.node(n).compute_ms + measured.node(n).update_ms for n in first.nodes)
    first_ms += measured.batch_ms + first.predicted.transfer_ms + call_ms
    assert first.predicted.compute_ms == pytest.approx(first_ms)

    index = {name: i for i, name in enumerate(graph.names)}
    nodes = [index[n] for n in last.nodes]
    with_loss, _ = kept_bytes(graph, [*nodes, graph.loss], ())
    without, _ = kept_bytes(graph, nodes, ())
    assert with_loss - without == measured.loss.saved_bytes  # its own, beyond the output
    # what its backward adds is its peak, not held per micro-batch: the stage's backward peak
    assert graph.backward_bytes[graph.loss] == measured.loss.backward_bytes > 0
