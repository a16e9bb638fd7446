"""Measured times follow the work: layers of 1x, 4x and 16x the FLOPs time in that order; on
one CPU thread the clock is the process's CPU time, with more it is wall time."""

import time

import pytest
import torch

from vpipe.common.modelfile import load_model_file
from vpipe.profiler.measure import MAX_RUNS, Clock, time_forward_backward
from vpipe.profiler.profiling import ProfileSettings, profile_model
from vpipe.profiler.report import clock_line

ATTEMPTS = 3  # the lowest of three medians per node: another busy process only ever adds time


def test_times_order_with_flops(fixtures):
    settings = ProfileSettings(batch_size=512, device="cpu", repeats=7, warmup=2)
    model_file = load_model_file(str(fixtures / "three_widths.py"))
    runs = [profile_model(model_file, settings) for _ in range(ATTEMPTS)]
    layers = [[n for n in run.nodes if n.target == "Linear"] for run in runs]
    forward = [min(run[i].forward_ms for run in layers) for i in range(3)]
    backward = [min(run[i].backward_ms for run in layers) for i in range(3)]
    assert forward[0] < forward[1] < forward[2], forward
    assert backward[0] < backward[1] < backward[2], backward


@pytest.fixture
def torch_threads():
    """Set torch's thread count in a test; restored after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_one_thread_is_timed_by_cpu_time(torch_threads):
    torch_threads(1)
    clock = Clock(torch.device("cpu"))
    assert clock.kind == "cpu"
    assert clock.time(lambda: time.sleep(0.2)) < 20  # sleeping takes no CPU: near 0 ms
    torch_threads(2)
    clock = Clock(torch.device("cpu"))
    assert clock.kind == "wall"
    assert 199 < clock.time(lambda: time.sleep(0.2)) < 1000  # the 200 ms it slept


def test_report_says_which_clock():
    assert clock_line("cpu", 1).startswith("times: the process's CPU time (one torch thread")
    assert clock_line("cpu", 2).startswith("times: wall time (2 torch threads")
    assert clock_line("cpu", None) == "times: wall time"
    assert clock_line("NVIDIA H200", None) == "times: CUDA events"


def _counted(calls: list[float]):
    """A call of known cost that records when each run started (process CPU seconds)."""

    def prepare():
        def call():
            calls.append(time.process_time())
            return torch.ones(4, requires_grad=True) * 2.0

        return call

    return prepare


def test_a_quick_call_is_warmed_and_timed_over_the_least_total_time(torch_threads):
    """The loss is timed this way: five runs of a call of microseconds are a median one
    preemption moves, and the first runs of a process may all be slow."""
    torch_threads(1)
    calls: list[float] = []
    least = 0.05
    timing = time_forward_backward(_counted(calls), Clock(torch.device("cpu")), 1, 3, least)
    assert len(calls) > 2 * 4  # warm-up and timed runs both went past their counts
    assert calls[-1] - calls[0] >= 2 * least * 0.9 or len(calls) >= 2 * MAX_RUNS
    assert 0 < timing.forward_ms < 5


def test_without_a_least_time_the_counts_are_exact(torch_threads):
    torch_threads(1)
    calls: list[float] = []
    time_forward_backward(_counted(calls), Clock(torch.device("cpu")), 2, 5)
    assert len(calls) == 2 + 5
