"""Throughput counts the steady state: the first steps (the pipeline filling) are left out of
metrics.csv's samples_per_s and of the final line, which says which steps counted."""

import csv
import time

import pytest

from vpipe.runtime.metrics import Metrics

PAUSE = 0.05  # seconds of a steady step


def run(path, steps, uncounted, first_slow=0.5, first_step=0):
    """A run whose first step takes `first_slow` seconds and every other PAUSE; one micro-batch
    of 4 samples a step."""
    metrics = Metrics(path, 1, 4, 100, steps, first_step=first_step, uncounted=uncounted)
    for step in range(first_step, steps):
        time.sleep(first_slow if step == first_step else PAUSE)
        metrics.add(1.0)
    metrics.close()
    with open(path) as file:
        return [float(row["samples_per_s"]) for row in csv.DictReader(file)]


def test_the_fill_is_left_out(tmp_path, capsys):
    rates = run(tmp_path / "metrics.csv", 6, uncounted=1)
    steady = 4 / PAUSE
    assert rates[0] < steady / 5  # the slow first step, as it came
    assert rates[-1] == pytest.approx(steady, rel=0.3)  # steps 1-5 only
    line = capsys.readouterr().out.splitlines()[-1]
    shown, rest = line.removeprefix("throughput: ").split(" ", 1)
    # the csv keeps 2 decimals, the line 1: the same rate, rounded twice
    assert float(shown) == pytest.approx(rates[-1], abs=0.06), line
    assert rest.startswith("samples/s over 5 steps (1-5; the first 1"), line


def test_counting_everything_is_dragged_down(tmp_path, capsys):
    """The check can fail: the same run with every step counted is far below the steady rate."""
    rates = run(tmp_path / "metrics.csv", 6, uncounted=0)
    assert rates[-1] < 4 / PAUSE / 2
    assert capsys.readouterr().out.splitlines()[-1].endswith("over 6 steps")


def test_a_run_too_short_counts_its_only_step(tmp_path, capsys):
    rates = run(tmp_path / "metrics.csv", 1, uncounted=3)
    assert len(rates) == 1 and rates[0] > 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("over 1 step")


def test_a_resumed_run_leaves_out_its_own_fill(tmp_path, capsys):
    path = tmp_path / "metrics.csv"
    run(path, 4, uncounted=1)
    rates = run(path, 8, uncounted=2, first_step=4)
    assert len(rates) == 8
    line = capsys.readouterr().out.splitlines()[-1]
    assert "over 2 steps (6-7; the first 2" in line
