"""Paths the files record: relative to the recording file's directory, so that each command runs
from any folder (common/paths.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from vpipe.codegen.cli import main as generate_main
from vpipe.codegen.schema import load_pipeline
from vpipe.common.paths import recorded_model, recorded_path, resolved_model, resolved_path
from vpipe.planner.cli import main as plan_main
from vpipe.profiler.cli import main as profile_main
from vpipe.profiler.schema import load_profile
from vpipe.runtime.cli import main as train_main

from .codegen.pipelines import QUICK_PROFILE, straight

QUICK = [*QUICK_PROFILE, "--batch-size", "4"]
MODEL = """\
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def make_batch(batch_size, step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(batch_size, 8, generator=g), torch.randint(0, 4, (batch_size,), generator=g)
"""


def _recorded(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture
def chain(tmp_path, monkeypatch) -> Path:
    """Profile, plan and generate a model *file*, each command from a folder of its own:
    a/ holds the model, a/prof/ its profile, b/plans/ the plan, c/out/ the pipeline."""
    for folder in ("a/prof", "b/plans", "c", "d"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "a" / "model.py").write_text(MODEL)
    monkeypatch.chdir(tmp_path / "a")
    assert profile_main(["model.py", "-o", "prof/profile.yaml", *QUICK]) == 0
    monkeypatch.chdir(tmp_path / "b")
    assert (
        plan_main(
            [
                "../a/prof/profile.yaml",
                *straight(2),
                "-o",
                "plans/plan.yaml",
                "-q",
            ]
        )
        == 0
    )
    monkeypatch.chdir(tmp_path / "c")
    assert generate_main(["../b/plans/plan.yaml", "-o", "out", "-q"]) == 0
    return tmp_path


def test_each_command_from_its_own_folder(chain, monkeypatch):
    assert _recorded(chain / "a/prof/profile.yaml")["source"] == "../model.py"
    assert _recorded(chain / "b/plans/plan.yaml")["profile"] == "../../a/prof/profile.yaml"
    pipeline = _recorded(chain / "c/out/pipeline.yaml")
    assert (pipeline["plan"], pipeline["model"]) == ("../../b/plans/plan.yaml", "../../a/model.py")
    assert "Stage 0 of 2 of ../../a/model.py" in (chain / "c/out/stage_0.py").read_text()

    monkeypatch.chdir(chain / "d")
    assert train_main(["../c/out/pipeline.yaml", "--steps", "2", "--threads", "1"]) == 0
    run = chain / "c/out/run"
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header and 2 steps
    assert _recorded(run / "settings.yaml")["pipeline"] == "../pipeline.yaml"


def test_the_files_move_together(chain, tmp_path_factory, monkeypatch):
    """Nothing recorded points outside the tree by an absolute path: a copy works on its own."""
    copy = tmp_path_factory.mktemp("moved") / "tree"
    shutil.copytree(chain, copy)
    shutil.rmtree(chain)
    monkeypatch.chdir(copy.parent)
    assert generate_main([str(copy / "b/plans/plan.yaml"), "-o", "again", "-q"]) == 0
    pipeline = load_pipeline("again/pipeline.yaml")
    assert Path(pipeline.model).samefile(copy / "a/model.py")
    assert (Path("again") / pipeline.plan).samefile(copy / "b/plans/plan.yaml")
    assert load_profile(copy / "a/prof/profile.yaml").source == str(copy / "a/model.py")


def test_module_names_stay_as_they_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("prof").mkdir()
    assert profile_main(["vpipe.models.mlp", "-o", "prof/profile.yaml", *QUICK]) == 0
    assert _recorded(tmp_path / "prof/profile.yaml")["source"] == "vpipe.models.mlp"
    assert recorded_model("vpipe.models.gpt", "x/y/plan.yaml") == "vpipe.models.gpt"
    assert resolved_model("vpipe.models.gpt", "x/y/plan.yaml") == "vpipe.models.gpt"


def test_recording_and_resolving(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("m").write_text("")  # a model file without .py still reads as a path once recorded
    assert recorded_model("m", "sub/profile.yaml") == "../m"
    assert recorded_model("m", "profile.yaml") == "./m"
    assert resolved_model("./m", "profile.yaml") == "m"
    assert recorded_path(tmp_path / "m", "sub/profile.yaml") == "../m"  # absolute: relative too
    assert resolved_path("../m", "sub/profile.yaml") == "m"
    assert resolved_path("../m", tmp_path / "sub/profile.yaml") == str(tmp_path / "m")
    assert resolved_path("/elsewhere/m.py", "sub/p.yaml") == "/elsewhere/m.py"
    # a file written before: its path was relative to where its command ran, and still works
    assert resolved_path("m", "old/profile.yaml") == "m"


def test_a_linked_folder_resolves_physically(tmp_path, monkeypatch):
    """`link/..` is the parent of the folder the link points to, not the one holding the link."""
    (tmp_path / "real/deep").mkdir(parents=True)
    (tmp_path / "real/model.py").write_text(MODEL)
    os.symlink(tmp_path / "real/deep", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    recorded = recorded_path("real/model.py", "link/profile.yaml")
    assert recorded == "../model.py"
    assert Path(resolved_path(recorded, "link/profile.yaml")).samefile("real/model.py")


def test_run_config_paths_are_relative_to_it(tmp_path, monkeypatch):
    from vpipe.runtime.cli import build_parser, settings_from

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf/run.yaml").write_text("checkpoint_dir: ckpt\n")
    (tmp_path / "ckpt").mkdir()  # another run's, here: not the one the config names
    monkeypatch.chdir(tmp_path)
    chosen = settings_from(build_parser().parse_args(["p.yaml", "--config", "conf/run.yaml"]))
    assert chosen["checkpoint_dir"] == "conf/ckpt"
    flag = ["p.yaml", "--config", "conf/run.yaml", "--checkpoint-dir", "mine"]
    assert settings_from(build_parser().parse_args(flag))["checkpoint_dir"] == "mine"
