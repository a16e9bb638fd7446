"""vpipe-train as a user runs it: a run config, flags over it, and one clear line on bad input."""

import re
import shutil

import pytest

from vpipe.common.yamlfile import load_yaml
from vpipe.runtime.cli import main as train_main

from ..codegen.pipelines import generate, plan, profile


@pytest.fixture(scope="module")
def mlp_pipeline(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mlp")
    return generate(plan(profile("mlp", directory), 2, directory, False), directory / "out")


def test_config_file_and_flags(mlp_pipeline, tmp_path):
    config = tmp_path / "run.yml"
    config.write_text("lr: 0.2\nsteps: 3\noptimizer: adam\nschedule: gpipe\n")
    argv = [str(mlp_pipeline / "pipeline.yaml"), "--config", str(config), "--steps", "2"]
    assert train_main([*argv, "--threads", "1"]) == 0
    used = load_yaml(mlp_pipeline / "run" / "settings.yaml", "settings")
    assert (used["lr"], used["steps"], used["optimizer"], used["schedule"]) == (
        0.2,
        2,  # the flag wins over the file
        "adam",
        "gpipe",
    )
    rows = (mlp_pipeline / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,loss,samples_per_s,elapsed_s" and len(rows) == 3


def _error(argv, capsys):
    code = train_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    return err


def test_unknown_config_key(mlp_pipeline, tmp_path, capsys):
    config = tmp_path / "run.yml"
    config.write_text("learning_rate: 0.1\n")
    err = _error([mlp_pipeline / "pipeline.yaml", "--config", config], capsys)
    assert "unknown setting learning_rate" in err


def test_missing_pipeline(tmp_path, capsys):
    assert "pipeline" in _error([tmp_path / "nowhere.yaml"], capsys)


def test_pipeline_from_another_version(mlp_pipeline, tmp_path, capsys):
    edited = tmp_path / "pipeline.yaml"
    text = (mlp_pipeline / "pipeline.yaml").read_text()
    edited.write_text(text.replace("schema_version: 1", "schema_version: 99"))
    assert "regenerate it" in _error([edited], capsys)


def test_epochs_need_the_model_files_epoch_size(mlp_pipeline, capsys):
    err = _error([mlp_pipeline / "pipeline.yaml", "--epochs", "1"], capsys)
    assert "defines no EPOCH_SAMPLES" in err


def test_a_stage_file_that_no_longer_loads(mlp_pipeline, tmp_path, capfd):
    """One line per failing stage, then the launcher's one line; exit status 2."""
    out = tmp_path / "out"
    shutil.copytree(mlp_pipeline, out)
    (out / "stage_1.py").write_text("import no_such_module\n")
    code = train_main([str(out / "pipeline.yaml"), "--steps", "1"])
    err = capfd.readouterr().err  # the stage's line comes from its own process
    assert code == 2
    assert "stage 1: " in err and "stage_1.py cannot be loaded" in err
    assert "training failed on stage 1" in err


def test_a_stage_edited_to_return_another_shape(mlp_pipeline, tmp_path, capfd):
    out = tmp_path / "out"
    shutil.copytree(mlp_pipeline, out)
    stage = out / "stage_0.py"
    edited = re.sub(r"return \((\w+),\)", r"return (\1[:, :1],)", stage.read_text(), count=1)
    stage.write_text(edited)
    code = train_main([str(out / "pipeline.yaml"), "--steps", "1"])
    err = capfd.readouterr().err
    assert code == 2
    assert "stage 0 returns" in err and "pipeline.yaml expects" in err, err
