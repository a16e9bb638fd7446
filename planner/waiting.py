"""What a stage waits for: the messages' delays on the schedule's dependency chain.

A stage's predicted time (`costmodel.evaluate_stage`) is what it computes; the pipeline's pace
also depends on how long each message takes from the end of the action that sends it to the
start of the one that needs it. Per cut between stages s and s + 1, one way
(`costmodel.message_delay_ms`, held in stage s's prediction as `delay_ms`):

    delay[s] = latency + copy_ms(cut) / 2 + bytes(cut) / bandwidth

- `latency`: from a message's send to its receive, beyond its copies: `vpipe-plan --latency-ms`,
  which `vpipe-probe` measures in the runtime (a balanced 2-stage pipeline's round trip, halved:
  0.07-0.08 ms on the development VM). Without it, the receiving end's share of the cut's
  per-message link work stands for it (the profile's or `--message-ms`'s cost a message, 0.16-0.21
  ms there), which is a CPU cost, not a wait: on `mlp`, whose stages take under a millisecond, it
  over-stated 1f1b's waiting by 10-15%;
- `copy_ms(cut)`: the part of the link work that scales with the bytes (the profile's `link`
  cost per MiB), activations forward and gradients back: the receiver's gloo thread copies a
  message in before the receiving action can use it, so the receiving end's share lies on the
  chain once per direction;
- `bytes(cut) / bandwidth`: the wire, `comm_out_ms / 2` of the sending stage (comm_out counts
  both directions).

How the delays add up depends on the schedule (`simulate.asp_period_ms`: loops of consecutive
stages under asp; `simulate.simulate` for a flushing schedule's step). Both read only the
stages' predictions, so the report and the plan agree by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vpipe.planner.schema import StagePrediction


@dataclass(frozen=True)
class CutDelay:
    """One cut's message delays, one way each (ms)."""

    activations_ms: float  # from stage s to s + 1, after s's forward
    gradients_ms: float  # from s + 1 back to s, after s + 1's backward


def cut_delays(predictions: Sequence[StagePrediction]) -> list[CutDelay]:
    """Each cut's delays, one way each, from the predictions of the stages before them."""
    return [CutDelay(p.delay_ms, p.delay_ms) for p in predictions[:-1]]


def round_trip_ms(delay: CutDelay) -> float:
    return delay.activations_ms + delay.gradients_ms
