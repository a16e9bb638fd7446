"""Every stage logs its actions; the report reads them back with the plan's predictions."""

import csv

import pytest

from vpipe.runtime.cli import main as train_main

from ..codegen.pipelines import generate, plan, profile


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mlp")
    argv = ["--schedule", "1f1b", "--microbatches", "4"]
    out = generate(plan(profile("mlp", directory), 2, directory, False, *argv), directory / "out")
    assert train_main([str(out / "pipeline.yaml"), "--steps", "3", "--threads", "1"]) == 0
    return out


def test_events_are_the_schedules_actions(trained):
    for k in range(2):
        with open(trained / "run" / f"events_stage{k}.csv") as file:
            rows = list(csv.DictReader(file))
        assert (
            [r["action"] for r in rows].count("F") == 12 == [r["action"] for r in rows].count("B")
        )
        starts = [float(r["start_s"]) for r in rows]
        assert starts == sorted(starts)  # one stage runs its actions one after another
        for r in rows:
            assert 0 <= float(r["wait_s"]) <= float(r["end_s"]) - float(r["start_s"])


def test_report_and_timeline(trained, capsys):
    assert train_main([str(trained / "pipeline.yaml"), "--report"]) == 0
    out = capsys.readouterr().out
    assert "predicted vs measured, 1f1b" in out and "bubble: measured" in out
    assert (trained / "run" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
