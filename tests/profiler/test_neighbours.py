"""vpipe-profile --beside: other processes train the model while the profiler times it, and
none outlives the profile."""

import os
import time

import pytest

from vpipe.common.errors import VpipeError
from vpipe.common.modelfile import load_model_file
from vpipe.profiler import neighbours
from vpipe.profiler.neighbours import WARM_STEPS, busy_neighbours
from vpipe.profiler.profiling import ProfileSettings, profile_model

QUICK = {"repeats": 1, "warmup": 0, "min_time_s": 0.0, "device": "cpu", "threads": 1}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_neighbours_train_meanwhile_and_are_gone_after(fixtures, tmp_path, monkeypatch):
    notes = tmp_path / "batches.txt"
    monkeypatch.setenv("COUNTED_BATCHES", str(notes))
    model_file = load_model_file(str(fixtures / "counted_batches.py"))
    settings = ProfileSettings(batch_size=4, beside=1, **QUICK)
    profile = profile_model(model_file, settings)
    makers = [int(line) for line in notes.read_text().split()]
    others = set(makers) - {os.getpid()}
    assert profile.beside == 1
    assert len(others) == 1  # the neighbour: a process of its own
    # past its warm-up steps: it was still training while the profile was timed
    assert all(makers.count(pid) > WARM_STEPS for pid in others)
    assert not any(_alive(pid) for pid in others)


def test_no_neighbours_by_default(fixtures, tmp_path, monkeypatch):
    notes = tmp_path / "batches.txt"
    monkeypatch.setenv("COUNTED_BATCHES", str(notes))
    model_file = load_model_file(str(fixtures / "counted_batches.py"))
    profile = profile_model(model_file, ProfileSettings(batch_size=4, **QUICK))
    assert profile.beside == 0
    assert set(notes.read_text().split()) == {str(os.getpid())}


def test_a_neighbour_that_cannot_start_is_one_clear_error(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise SystemExit('this model file fails to load')\n")
    with pytest.raises(VpipeError, match=r"--beside.*fails to load"):
        with busy_neighbours(str(broken), 1, batch_size=2, threads=1, seed=0):
            pass


def test_a_negative_count_is_refused():
    with pytest.raises(VpipeError, match="--beside -1: must be at least 0"):
        profile_model(load_model_file("vpipe.models.mlp"), ProfileSettings(beside=-1, **QUICK))


def test_a_neighbour_that_hangs_is_stopped_and_named(tmp_path, monkeypatch):
    stuck = tmp_path / "stuck.py"
    stuck.write_text("import time\ntime.sleep(600)\n")  # a model file that never finishes loading
    monkeypatch.setattr(neighbours, "START_TIMEOUT_S", 1.0)
    started = time.monotonic()
    with pytest.raises(VpipeError, match=r"--beside\) did not train 2 steps in 1 s"):
        with busy_neighbours(str(stuck), 1, batch_size=2, threads=1, seed=0):
            pass
    assert time.monotonic() - started < 30
