"""vpipe-probe as a user runs it: the probe model trained as one stage and as two, real gloo
processes on loopback, and the per-message cost worked out again here from the runs' logs."""

import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from vpipe.run.probe import WARMUP, ProbeResult, action_jitter
from vpipe.runtime.events import ActionEvent, EventLog, read_events

STEPS = WARMUP + 40


def busy_ms(events: Path) -> float:
    """Mean CPU ms per micro-batch past the warm-up, leaving out the last two."""
    rows = read_events(events)
    last = max(e.microbatch for e in rows)
    per = {}
    for e in rows:
        if WARMUP <= e.microbatch < last - 1:
            per[e.microbatch] = per.get(e.microbatch, 0.0) + e.cpu_s
    return statistics.mean(per.values()) * 1e3


def latency_ms(kept: Path) -> float:
    """The asp pair's wall ms per micro-batch (between the first stage's backwards' ends, the
    same stretch) beyond the two stages' mean CPU ms per micro-batch, at least 0."""
    run = kept / "stages2" / "run"
    ends = sorted(e.end_s for e in read_events(run / "events_stage0.csv") if e.action == "B")
    steady = ends[WARMUP:-2]
    period = (steady[-1] - steady[0]) / (len(steady) - 1) * 1e3
    two = [busy_ms(run / f"events_stage{k}.csv") for k in range(2)]
    return max(0.0, period - sum(two) / 2)


def spread(events: Path, kind: str) -> float:
    """Past the warm-up: the log-sd of each action of `kind` over the median of the 21 around
    it (itself and ten either side)."""
    times = [e.cpu_s for e in read_events(events) if e.action == kind and e.microbatch >= WARMUP]
    logs = [
        math.log(times[i] / sorted(times[i - 10 : i + 11])[10]) for i in range(10, len(times) - 10)
    ]
    return statistics.pstdev(logs)


def test_the_probe_times_one_stage_against_two_and_prints_the_flags_to_plan_with(tmp_path):
    """--schedule 1f1b: the cost per message from the probe model trained under 1f1b as one
    stage and as two (M micro-batches a step), the latency from the asp pair's loop; both
    worked out again here from the runs' logs."""
    command = Path(sys.executable).parent / "vpipe-probe"
    argv = ["--steps", str(STEPS), "--schedule", "1f1b", "--microbatches", "2"]
    result = subprocess.run(
        [str(command), *argv, "--keep", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    # the runs' own output went to the log, the probe's lines to the terminal
    assert "Finished initializing process group" not in result.stdout
    assert "Finished initializing process group" in (tmp_path / "probe.log").read_text()
    flags = re.search(
        r"plan with: vpipe-plan <profile> --message-ms (\S+) --latency-ms (\S+) --jitter (\S+)",
        result.stdout,
    )
    assert flags, result.stdout
    synced = tmp_path / "1f1b"
    one = busy_ms(synced / "stages1" / "run" / "events_stage0.csv")
    two = [busy_ms(synced / "stages2" / "run" / f"events_stage{k}.csv") for k in range(2)]
    # the probe's cut carries one float tensor: an activation and its gradient at each end
    assert float(flags.group(1)) == pytest.approx(max(0.0, (sum(two) - one) / 4), abs=1e-4)
    assert 0 < one < 50 and all(0 < ms < 50 for ms in two)  # a tiny model: well under 50 ms
    rows = read_events(synced / "stages2" / "run" / "events_stage0.csv")
    assert {e.microbatch for e in rows} == set(range(STEPS // 2 * 2))  # steps of 2 micro-batches
    assert float(flags.group(2)) == pytest.approx(latency_ms(tmp_path), abs=1e-4)
    loop = tmp_path / "stages2" / "run"  # the jitter, as the latency, is the asp pair's
    spreads = [spread(loop / f"events_stage{k}.csv", kind) for k in range(2) for kind in "FB"]
    assert float(flags.group(3)) == pytest.approx(statistics.mean(spreads), abs=1e-3)


def test_a_probe_below_its_one_stage_twin_gives_no_negative_cost():
    assert ProbeResult(0.3, (0.2, 0.3), 4, 0.04, 0.3, 0.25, 0.1).message_ms == pytest.approx(0.05)
    assert ProbeResult(0.6, (0.2, 0.3), 4, 0.04, 0.3, 0.25, 0.1).message_ms == 0.0


def test_the_latency_is_the_time_per_micro_batch_beyond_the_stages_mean_cpu_time():
    # stages of 0.2 and 0.3 ms in a loop of 0.3 ms a micro-batch: (0.2 + 0.3 + 2 x 0.05) / 2
    assert ProbeResult(0.3, (0.2, 0.3), 4, 0.04, 0.3, 0.25, 0.1).latency_ms == pytest.approx(0.05)
    assert ProbeResult(0.3, (0.2, 0.3), 4, 0.04, 0.24, 0.25, 0.1).latency_ms == 0.0  # never below 0


def write_forwards(path: Path, cpu_s: list[float]) -> None:
    """A stage's log of forwards only, the first WARMUP of them left out by the probe."""
    log = EventLog(path)
    for i, cpu in enumerate([1.0] * WARMUP + cpu_s):
        log.add(ActionEvent("F", i, float(i), i + cpu, 0.0, cpu, cpu))
    log.close()


def test_the_jitter_is_each_actions_spread_around_its_neighbours_median(tmp_path):
    """Forwards of 100 ms, every tenth e^0.5 times as long: against the median of the 21 around
    it (100 ms), one action in ten sits 0.5 above it in log and the rest on it, a standard
    deviation of 0.5 x sqrt(0.1 x 0.9) = 0.15. A machine slowing to a third of its speed over
    the run moves the medians along: the spread stays, where the logs' own more than doubles."""
    base = [0.1 * (math.exp(0.5) if i % 10 == 0 else 1.0) for i in range(220)]
    even, drifting = tmp_path / "even.csv", tmp_path / "drifting.csv"
    write_forwards(even, base)
    assert action_jitter(even, "F") == pytest.approx(0.15, abs=1e-4)
    slowed = [t * (1 + 2 * i / 220) for i, t in enumerate(base)]
    write_forwards(drifting, slowed)
    assert action_jitter(drifting, "F") == pytest.approx(0.15, abs=0.01)
    assert statistics.pstdev(math.log(t) for t in slowed) > 0.3


def test_too_few_steps_to_time_are_refused_by_the_parser():
    command = Path(sys.executable).parent / "vpipe-probe"
    result = subprocess.run([str(command), "--steps", "5"], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"--steps: must be at least {WARMUP + 10}" in result.stderr
