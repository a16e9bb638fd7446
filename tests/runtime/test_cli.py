"""vpipe-train as a user runs it: a run config and flags over it (bad inputs:
tests/test_bad_inputs.py)."""

import pytest

from vpipe.runtime.cli import main as train_main
from vpipe.runtime.settings import load_settings

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
    used = load_settings(mlp_pipeline / "run" / "settings.yaml", "")
    assert used.pipeline == str(mlp_pipeline / "pipeline.yaml")  # recorded relative to run/
    assert (used.lr, used.steps, used.optimizer, used.schedule) == (
        0.2,
        2,  # the flag wins over the file
        "adam",
        "gpipe",
    )
    rows = (mlp_pipeline / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,loss,samples_per_s,elapsed_s" and len(rows) == 3
