"""How many copies of a kind of tensor the runtime keeps at once: the multipliers of the planner's
memory model, defined here once. The runtime imports them to behave so (runtime/links.py posts
and waits by them, runtime/executor.py sums gradients by them) and the planner's cost model
imports them to count; neither restates the other. No torch here: the planner reads it.
"""

from __future__ import annotations

# receives posted beyond the one a stage is about to use: a message's latency then overlaps the
# compute before it is needed (gloo's small-message latency is a millisecond or more)
RECEIVES_AHEAD = 1
# sends left unconfirmed, per micro-batch sent: gloo lets a send's tensors go only once it is
# waited on, so a stage waits on the send this many micro-batches back before sending again
SENDS_AHEAD = 2


def sums_gradients(schedule: str) -> bool:
    """Whether a stage keeps a running sum of its gradients beside each micro-batch's own: the
    synchronous schedules do (one update per step, from a sum the stage owns and may scale in
    place); asp updates from each backward's own gradients."""
    return schedule != "asp"


def gradient_copies(schedule: str) -> int:
    """Gradient-sized tensors a stage holds at its peak (see `sums_gradients`)."""
    return 2 if sums_gradients(schedule) else 1


def allreduce_copies(replicas: int) -> int:
    """Gradient-sized buffers a replicated stage adds at each update: runtime/replicas.py lays
    its gradients end to end in one new buffer for the all-reduce (one collective, not one per
    tensor), whose parts are then the summed gradients."""
    return 1 if replicas > 1 else 0
