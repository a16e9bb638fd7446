"""One error per failed run (runtime/failures.py): whatever stops a stage, vpipe-train prints one
line naming the stage that caused it and the log that holds its traceback, not the other
stages' loss of it; a bug exits 1, bad input 2."""

import hashlib
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from vpipe.codegen.schema import load_pipeline, save_pipeline
from vpipe.common.errors import VpipeError
from vpipe.planner.cli import main as plan_main
from vpipe.profiler.cli import main as profile_main
from vpipe.runtime import failures
from vpipe.runtime.cli import main as train_main

from ..codegen.pipelines import QUICK_PROFILE, generate, plan, profile, straight

# a model file that exits at import in stage 1's process only (not in the launcher's, which
# imports it first and would catch it there)
EXITS_IN_STAGE_1 = """import os
import sys

from vpipe.models.mlp import build_model, make_batch  # noqa: F401

if os.environ.get("RANK") == "1":
    sys.exit(3)
"""


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mlp")
    return generate(plan(profile("mlp", root), 2, root, False), root / "out")


def _train(out: Path, capfd) -> tuple[int, str, str]:
    capfd.readouterr()
    code = train_main([str(out / "pipeline.yaml"), "--steps", "2", "--threads", "1"])
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def _one_line(err: str) -> tuple[str, Path]:
    """The one line on stderr, less its prefix and log, and the log it names (which must hold
    a traceback)."""
    assert len(err.splitlines()) == 1, err
    found = re.fullmatch(r"vpipe-train: error: (stage \d: .*) \(full traceback: (.+)\)\n", err)
    assert found, err
    log = Path(found[2])
    assert "Traceback (most recent call last)" in log.read_text(), err
    return found[1], log


def _record_as_generated(out: Path, index: int) -> None:
    """pipeline.yaml records stage `index`'s file as it is now, as if vpipe-gen wrote it so."""
    pipeline = load_pipeline(out / "pipeline.yaml")
    stages = list(pipeline.stages)
    written = (out / stages[index].module.partition(":")[0]).read_bytes()
    stages[index] = replace(stages[index], module_sha256=hashlib.sha256(written).hexdigest())
    save_pipeline(replace(pipeline, stages=tuple(stages)), out / "pipeline.yaml")


def test_a_bug_in_a_stage_is_one_line_and_exit_1(mlp, tmp_path, capfd):
    """Stage 1 raises mid-run; stage 0 then loses it: the line is stage 1's exception, and the
    next run leaves no record of it behind. The stage file raises as vpipe-gen wrote it (its
    sha256 recorded): a bug of vpipe's, not an edit of the user's."""
    out = shutil.copytree(mlp, tmp_path / "out")
    stage_file = out / "stage_1.py"
    good = stage_file.read_text()
    broken = re.sub(r"(\n( +)def forward\(.*\):\n)", r'\1\2    raise ValueError("boom")\n', good)
    assert broken != good
    stage_file.write_text(broken)
    _record_as_generated(out, 1)
    code, stdout, err = _train(out, capfd)
    assert code == 1, err
    line, log = _one_line(err)
    assert line == "stage 1: ValueError: boom"
    assert log == out / "run" / "logs" / "stage_1.log"
    assert 'raise ValueError("boom")' in log.read_text()
    assert "[Rank 1] Stage: 1" in stdout  # the stages' own output still reaches the user
    stage_file.write_text(good)
    _record_as_generated(out, 1)
    code, _, err = _train(out, capfd)
    assert code == 0 and err == "", err
    assert not list(log.parent.glob("*.failure.json"))
    assert "boom" not in log.read_text()


def test_a_model_file_exiting_in_a_stage_is_its_doing(tmp_path, capfd):
    model = tmp_path / "exits.py"
    model.write_text(EXITS_IN_STAGE_1)
    profiled = tmp_path / "profile.yaml"
    argv = [str(model), "-o", str(profiled), *QUICK_PROFILE, "--batch-size", "4"]
    assert profile_main(argv) == 0
    planned = tmp_path / "plan.yaml"
    assert plan_main([str(profiled), *straight(2), "-o", str(planned), "-q"]) == 0
    out = generate(planned, tmp_path / "out")
    code, _, err = _train(out, capfd)
    assert code == 2, err
    line, _ = _one_line(err)
    assert line.startswith(f"stage 1: {model} exited (SystemExit: 3) while vpipe imported it")


def _fail(run_dir: Path, rank: int, err: Exception) -> failures.Failure:
    def body() -> None:
        raise err

    failure = failures.run_logged(body, run_dir, rank, capture_stderr=False)
    assert failure
    return failure


def _died(rank: int, exitcode: int) -> ProcessFailure:
    return ProcessFailure(local_rank=rank, pid=1, exitcode=exitcode, error_file="")


def test_the_cause_is_the_earliest_failure_not_a_consequence(tmp_path):
    lost = _fail(tmp_path, 0, failures.LostPeer("lost stage 1: Connection closed by peer"))
    real = _fail(tmp_path, 1, VpipeError("bad input"))
    assert lost.time <= real.time
    assert failures.cause(tmp_path, {0: _died(0, 2)}) == real
    assert real.error().status == 2
    assert str(real.error()) == f"stage 1: bad input (full traceback: {real.log})"


def test_a_stage_killed_without_a_record_beats_a_consequence(tmp_path):
    _fail(tmp_path, 0, RuntimeError("[pair.cc:534] Connection reset by peer"))
    found = failures.cause(tmp_path, {0: _died(0, 2), 1: _died(1, -9)})
    assert (found.rank, found.message, found.status) == (1, "was killed by SIGKILL", 1)


def test_only_consequences_report_the_earliest(tmp_path):
    first = _fail(tmp_path, 1, RuntimeError("Socket closed\nmore"))
    _fail(tmp_path, 0, failures.LostPeer("lost stage 1: timed out"))
    (tmp_path / "logs" / "stage_2.failure.json").write_text("{torn")  # stopped mid-write
    assert first.message == "lost another stage: Socket closed"
    assert failures.cause(tmp_path, {1: _died(1, 2)}) == first


def test_a_bug_is_status_1_with_its_type(tmp_path):
    failure = _fail(tmp_path, 0, KeyError("weight"))
    assert (failure.kind, failure.message) == ("bug", "KeyError: 'weight'")
    assert failure.error().status == 1
    assert "KeyError" in Path(failure.log).read_text()


@pytest.mark.parametrize(
    "change",
    [
        lambda record: record.pop("schema_version"),  # an older vpipe's
        lambda record: record.update(schema_version=failures.SCHEMA_VERSION + 1),  # a newer one's
        lambda record: record.update(kind="oops"),  # not a kind this version knows
    ],
)
def test_a_record_this_version_did_not_write_counts_as_none(tmp_path, change):
    _fail(tmp_path, 1, VpipeError("bad input"))
    path = tmp_path / "logs" / "stage_1.failure.json"
    record = json.loads(path.read_text())
    assert record["schema_version"] == failures.SCHEMA_VERSION
    change(record)
    path.write_text(json.dumps(record))
    found = failures.cause(tmp_path, {1: _died(1, 2)})
    assert (found.rank, found.kind, found.message) == (
        1,
        "died",
        "exited with status 2 before saying why",
    )
