"""Every stage logs its actions; the report reads them back with the plan's predictions."""

import csv
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from vpipe.codegen.schema import load_pipeline
from vpipe.planner.schema import load_plan
from vpipe.runtime.cli import main as train_main
from vpipe.runtime.events import ActionEvent
from vpipe.runtime.report import MEMORY_HINT, NOT_MEASURED, stage_ms, timed_by_cpu

from ..codegen.pipelines import generate, plan, profile


def _train(directory, *extra):
    argv = ["--schedule", "1f1b", "--microbatches", "4"]
    out = generate(plan(profile("mlp", directory), 2, directory, False, *argv), directory / "out")
    assert train_main([str(out / "pipeline.yaml"), "--steps", "3", "--threads", "1", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("mlp"))


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("mlp_memory"), "--measure-memory")


def report(out, capsys) -> tuple[str, str]:
    """vpipe-train --report on `out`: what it printed, and the report.md it wrote."""
    assert train_main([str(out / "pipeline.yaml"), "--report"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'run' / 'report.md'}" in printed
    return printed, (out / "run" / "report.md").read_text()


def table(markdown: str, first_cells: str) -> list[list[str]]:
    """The rows of the markdown table whose header starts `| <first_cells>`, as cells."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cells}"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    header, _rule, *body = rows
    return [dict(zip(header, row, strict=True)) for row in body]


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
    printed, _ = report(trained, capsys)
    assert "predicted vs measured, 1f1b" in printed and "bubble: measured" in printed
    assert (trained / "run" / "timeline.png").read_bytes()[:4] == b"\x89PNG"


def test_report_imports_no_torch(trained):
    """--report reads files: it starts without torch's seconds of import."""
    code = (
        "import sys\n"
        "from vpipe.runtime.cli import main\n"
        f"assert main([{str(trained / 'pipeline.yaml')!r}, '--report']) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_report_sets_the_runs_throughput_against_the_plans(trained, capsys):
    printed, markdown = report(trained, capsys)
    with open(trained / "run" / "metrics.csv") as file:
        rate = float(list(csv.DictReader(file))[-1]["samples_per_s"])
    pipeline = load_pipeline(trained / "pipeline.yaml")
    slowest = max(float(r["measured ms"]) for r in table(markdown, "stage | predicted ms"))
    found = re.search(
        r"throughput: measured ([\d.]+) samples/s by wall clock, predicted ([\d.]+); the slowest"
        r" stage's measured time per micro-batch allows ([\d.]+)",
        " ".join(printed.split()),  # rich may wrap the line
    )
    assert found is not None, printed
    measured, predicted, allowed = map(float, found.groups())
    assert measured == pytest.approx(rate, abs=0.05)
    assert predicted == pytest.approx(pipeline.predicted.throughput_samples_per_s, abs=0.05)
    assert allowed == pytest.approx(pipeline.batch_size / (slowest / 1e3), rel=0.01)
    assert "Throughput: measured " in markdown


def test_report_md_holds_the_predictions_and_the_plan(trained, capsys):
    printed, markdown = report(trained, capsys)
    pipeline = load_pipeline(trained / "pipeline.yaml")
    planned = load_plan(trained / pipeline.plan)
    assert markdown.startswith("# vpipe run report: 1f1b, ")
    assert "![timeline: one row per stage](timeline.png)" in markdown
    assert "Bubble: measured " in markdown
    assert "(../../plan2.yaml)" in markdown  # the plan, linked from run/
    rows = table(markdown, "stage | predicted ms")
    assert [r["stage"] for r in rows] == ["0", "1"]
    for row, spec in zip(rows, pipeline.stages, strict=True):
        assert row["predicted ms"] == f"{spec.predicted.time_ms:.3f}"
        assert row["predicted MiB"] == f"{spec.predicted.memory.total / 2**20:.3f}"
        assert float(row["measured ms"]) > 0
        assert row["measured MiB"] == row["memory ratio"] == NOT_MEASURED
    # without --measure-memory on CPU: no figure, and how to get one, in both outputs
    assert MEMORY_HINT in printed and MEMORY_HINT in markdown
    assert "--measure-memory, which on CPU slows" not in markdown
    plan_rows = table(markdown, "stage | nodes")
    memory_rows = table(markdown, "stage | params")
    for row, memory, stage, spec in zip(
        plan_rows, memory_rows, planned.stages, pipeline.stages, strict=True
    ):
        assert row["nodes"] == str(len(stage.nodes))
        assert row["recomputed"] == str(len(stage.recompute))
        assert row["compute ms"] == f"{spec.predicted.compute_ms:.3f}"
        assert memory["activations"] == f"{spec.predicted.memory.activations / 2**20:.3f}"
        assert memory["total"] == f"{spec.predicted.memory.total / 2**20:.3f}"


def test_the_report_reads_no_plan(trained, capsys):
    """Node counts come from pipeline.yaml: a plan replaced since (re-planned for 3 GPUs, say)
    changes nothing in the report of the run that was made from the old one."""
    _, before = report(trained, capsys)
    plan = trained / load_pipeline(trained / "pipeline.yaml").plan
    kept = plan.read_bytes()
    plan.write_text("replaced\n")
    try:
        _, after = report(trained, capsys)
    finally:
        plan.write_bytes(kept)
    assert table(after, "stage | nodes") == table(before, "stage | nodes")


def test_report_md_memory_when_measured(measured, capsys):
    printed, markdown = report(measured, capsys)
    pipeline = load_pipeline(measured / "pipeline.yaml")
    for row, spec in zip(table(markdown, "stage | predicted ms"), pipeline.stages, strict=True):
        with open(measured / "run" / f"stage_{spec.index}.yaml") as file:
            peak = yaml.safe_load(file)["peak_memory_bytes"]
        assert peak > 0
        assert row["measured MiB"] == f"{peak / 2**20:.3f}"
        assert row["memory ratio"] == f"{peak / spec.predicted.memory.total:.2f}"
    assert MEMORY_HINT not in printed and MEMORY_HINT not in markdown
    assert "this run used --measure-memory, which on CPU slows every op" in markdown


def test_one_thread_or_more_processes_than_cores_times_by_cpu():
    events = [  # wall 10 ms less 2 ms waiting per action; 3 ms of CPU
        ActionEvent(action, 0, start, start + 0.010, 0.002, 0.003, 0.003)
        for action, start in (("F", 0.0), ("B", 0.1))
    ]
    assert timed_by_cpu(2, 2, threads=1) and timed_by_cpu(4, 2, threads=2)
    assert not timed_by_cpu(2, 2, threads=2) and not timed_by_cpu(1, 8, threads=4)
    # stage logs from before `threads`: processes against cores alone
    assert timed_by_cpu(4, 2, None) and not timed_by_cpu(2, 2, None) and timed_by_cpu(2, None, None)
    # a GPU's work is not the process's CPU time: wall, whatever the threads
    assert not timed_by_cpu(2, 2, threads=1, on_cpu=False)
    assert not timed_by_cpu(4, 2, threads=1, on_cpu=False)
    assert stage_ms(events, 2, 2, threads=1) == pytest.approx(6.0)  # 2 x 3 ms CPU
    assert stage_ms(events, 4, 2, threads=2) == pytest.approx(6.0)
    assert stage_ms(events, 2, 2, threads=2) == pytest.approx(16.0)  # 2 x (10 - 2) ms
    assert stage_ms(events, 2, 2, threads=None) == pytest.approx(16.0)


def _stage_logs(out):
    for k in range(2):
        path = out / "run" / f"stage_{k}.yaml"
        with open(path) as file:
            yield path, yaml.safe_load(file)


def _relogged(trained, directory, **keys):
    """A copy of the trained run whose stage logs say `keys` (a key set to None: left out)."""
    copy = shutil.copytree(trained.parent, directory) / "out"
    for path, log in _stage_logs(copy):
        log = {k: v for k, v in {**log, **keys}.items() if k not in keys or v is not None}
        path.write_text(yaml.safe_dump(log))
    return copy


def _measured_ms(out, markdown, column):
    """Per stage, the report's measured ms and the same from the events' `column`."""
    for k, row in enumerate(table(markdown, "stage | predicted ms")):
        with open(out / "run" / f"events_stage{k}.csv") as file:
            rows = list(csv.DictReader(file))
        if column == "cpu_s":
            busy = sum(float(r["cpu_s"]) for r in rows)
        else:
            busy = sum(float(r["end_s"]) - float(r["start_s"]) - float(r["wait_s"]) for r in rows)
        yield row["measured ms"], f"{busy / 12 * 1e3:.3f}"  # 12 forwards


def test_report_says_which_clock(trained, tmp_path, capsys):
    for _, log in _stage_logs(trained):  # what each stage's machine had, and its threads
        assert log["local_processes"] == 2 and log["cpu_count"] == os.cpu_count()
        assert log["threads"] == 1 and log["device"] == "cpu"  # --threads 1, on the CPU
    printed, markdown = report(trained, capsys)  # one thread: CPU time
    assert "measured ms: CPU time per micro-batch (one torch thread, and wall time" in printed
    assert "Measured ms: CPU time per micro-batch" in markdown
    assert all(shown == cpu for shown, cpu in _measured_ms(trained, markdown, "cpu_s"))

    crowded = _relogged(trained, tmp_path / "crowded", local_processes=8, cpu_count=2, threads=2)
    printed, markdown = report(crowded, capsys)
    assert "measured ms: CPU time per micro-batch (8 processes shared 2 cores" in printed
    assert all(shown == cpu for shown, cpu in _measured_ms(crowded, markdown, "cpu_s"))

    threaded = _relogged(trained, tmp_path / "threaded", local_processes=2, cpu_count=2, threads=2)
    printed, markdown = report(threaded, capsys)
    assert "measured ms: busy wall time per micro-batch" in printed
    assert "several torch threads, whose CPU time is a sum" in printed
    assert all(shown == wall for shown, wall in _measured_ms(threaded, markdown, "wall"))

    damaged = _relogged(trained, tmp_path / "damaged", threads=None)
    assert train_main([str(damaged / "pipeline.yaml"), "--report"]) == 2
    err = capsys.readouterr().err
    assert f"{damaged}/run/stage_0.yaml: not a valid stage log: missing field threads" in err, err


def test_an_earlier_runs_stage_log_is_not_this_runs(measured, tmp_path, capsys):
    copy = shutil.copytree(measured.parent, tmp_path / "copy") / "out"
    events = (copy / "run" / "events_stage1.csv").stat().st_mtime
    os.utime(copy / "run" / "stage_1.yaml", (events - 60, events - 60))
    printed, markdown = report(copy, capsys)
    rows = table(markdown, "stage | predicted ms")
    assert rows[0]["measured MiB"] != NOT_MEASURED and rows[1]["measured MiB"] == NOT_MEASURED
    assert "memory of stage 1 unknown: the run stopped before writing" in printed
