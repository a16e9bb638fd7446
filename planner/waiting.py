"""What a stage waits for: the messages' delays on the schedule's dependency chain.

A stage's predicted time (`costmodel.evaluate_stage`) is what it computes; the pipeline's pace
also depends on how long each message takes from the end of the action that sends it to the
start of the one that needs it. Per cut between stages s and s + 1, one way
(`costmodel.message_delay_ms`):

    delay[s] = link_ms(cut) / 2 + bytes(cut) / bandwidth

- `link_ms(cut)`: the CPU time each end spends on the tensors crossing the cut, activations
  forward and gradients back (the profile's `link` cost per message and per MiB, which
  `crossing_link_ms` sums and each side's `transfer_ms` holds): after the sender has written a
  message, the receiver's gloo thread still copies it in before the receiving action can use
  it, so the receiving end's share lies on the chain once per direction;
- `bytes(cut) / bandwidth`: the wire, `comm_out_ms / 2` of the sending stage (comm_out counts
  both directions).

How the delays add up depends on the schedule (`simulate.asp_period_ms`: loops of consecutive
stages under asp; `simulate.simulate` for a flushing schedule's step). Both read only the
stages' predictions, so the report and the plan agree by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vpipe.planner.costmodel import message_delay_ms
from vpipe.planner.schema import StagePrediction


@dataclass(frozen=True)
class CutDelay:
    """One cut's message delays, one way each (ms)."""

    activations_ms: float  # from stage s to s + 1, after s's forward
    gradients_ms: float  # from s + 1 back to s, after s + 1's backward


def cut_delays(predictions: Sequence[StagePrediction]) -> list[CutDelay]:
    """Each cut's delays from the stages' predictions: a cut's link work is the stage before
    it's `transfer_ms` less the link work of the cut before that stage (the first stage has
    none before it), and its wire time is that stage's `comm_out_ms` (both ways)."""
    delays, before = [], 0.0
    for p in predictions[:-1]:
        link = p.transfer_ms - before
        one_way = message_delay_ms(link, p.comm_out_ms)
        delays.append(CutDelay(one_way, one_way))
        before = link
    return delays


def round_trip_ms(delay: CutDelay) -> float:
    return delay.activations_ms + delay.gradients_ms
