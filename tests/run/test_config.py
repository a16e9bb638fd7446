"""The run config of vpipe-run: every bad field is one clear line naming it, and nothing runs.

Each case goes through the command's entry point, so it fails the way a user sees it: exit
status 2, one line on stderr, no traceback, and no output folder made.
"""

from pathlib import Path

import pytest
import torch

from vpipe.run.cli import main
from vpipe.run.schema import load_run_config
from vpipe.run.steps import plan_steps

GOOD = """\
schema_version: 1
model: vpipe.models.mlp
output: runs/mlp
profile: {batch_size: 4, threads: 1, leaf: [Linear], quiet: true}
plan: {gpus: 2, memory: 12MiB}
train: {steps: 3, lr: 0.01, optimizer: adam}
"""


def vpipe_run(config: Path, capsys) -> tuple[int, str, str]:
    status = main([str(config)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_good_config_makes_the_four_commands(tmp_path):
    config = tmp_path / "run.yml"
    config.write_text(GOOD)
    out = tmp_path / "runs" / "mlp"  # relative to the config file
    steps = [str(step) for step in plan_steps(load_run_config(config))]
    assert steps == [
        f"vpipe-profile vpipe.models.mlp -o {out}/profile.yaml --batch-size 4 --threads 1 "
        "--leaf Linear --quiet",
        f"vpipe-plan {out}/profile.yaml -o {out}/plan.yaml --gpus 2 --memory 12MiB",
        f"vpipe-gen {out}/plan.yaml -o {out}/out",
        f"vpipe-train {out}/out/pipeline.yaml --steps 3 --lr 0.01 --optimizer adam",
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        (("schema_version: 1", "schema_version: 7"), "schema_version 7 is not 1; set"),
        (("model: vpipe.models.mlp\n", ""), "model is missing; add it, e.g. `model:"),
        (("model: vpipe.models.mlp", "model: [mlp]"), "model ['mlp']: must be a string"),
        (("output: runs/mlp\n", ""), "output is missing"),
        (("output: runs/mlp", "outptu: runs/mlp"), "unknown field outptu; known: schema_"),
        (("batch_size: 4", "batch_size: four"), "profile.batch_size 'four': must be a whole"),
        (("threads: 1", "threads: true"), "profile.threads True: must be a whole number"),
        (("threads: 1", "threads: 1, min_time: soon"), "profile.min_time 'soon': must be a number"),
        (
            ("threads: 1", "threads: 1, min_time: -1"),
            "profile: argument --min-time: must be at least 0",
        ),
        (("quiet: true", "quiet: 1"), "profile.quiet 1: must be true or false"),
        (("leaf: [Linear]", "leaf: Linear"), "profile.leaf 'Linear': must be a list of names"),
        (("batch_size: 4", "batch_sise: 4"), "profile.batch_sise: unknown option; profile takes"),
        (("batch_size: 4", "output: x.yaml"), "profile.output: unknown option"),
        (("gpus: 2, ", ""), "plan.gpus is missing (--gpus: devices (processes)"),
        (("memory: 12MiB", "memory: lots"), "plan: argument --memory: "),
        (("optimizer: adam", "optimizer: lion"), "train.optimizer 'lion': use one of sgd"),
        (("lr: 0.01", "lr: fast"), "train.lr 'fast': must be a number"),
        (("steps: 3", "steps: 0"), "train: --steps 0: must be a whole number of at least 1"),
        (("steps: 3", "steps: 3, epochs: 1"), "train: argument --epochs: not allowed with"),
        (("train: {", "train: 3\nx: {"), "unknown field x"),
        (("train: {", "gen: [a]\ntrain: {"), "gen must be a mapping of option: value"),
        (("lr: 0.01", "lr: 0.01, lr: 0.5"), "the key 'lr' appears twice at line 6"),
        (("steps: 3", "steps: 3, resume: true"), "train.resume: a vpipe-run generates the"),
        (("steps: 3", "steps: 3, warmup_steps: 5"), "--warmup-steps 5: must be fewer than"),
        (("gpus: 2", "gpus: 0"), "plan: argument --gpus: must be at least 1 (got 0)"),
        (("batch_size: 4", "batch_size: -4"), "profile: argument --batch-size: must be at least"),
        (("memory: 12MiB", "memory: 12MiB, headroom: 1"), "plan: argument --headroom: must be"),
        pytest.param(
            ("threads: 1", "threads: 1, device: cuda"),
            "profile: argument --device: no CUDA GPU is visible to PyTorch on this machine",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible"),
        ),
    ],
)
def test_a_bad_field_is_one_line_naming_it(tmp_path, capsys, change, message):
    config = tmp_path / "run.yml"
    old, new = change
    assert old in GOOD
    config.write_text(GOOD.replace(old, new, 1))
    status, out, err = vpipe_run(config, capsys)
    assert status == 2, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vpipe-run: error: {config}"), lines
    assert message in lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_config_that_is_not_a_mapping(tmp_path, capsys):
    config = tmp_path / "run.yml"
    config.write_text("- model\n")
    status, _, err = vpipe_run(config, capsys)
    assert status == 2
    assert err.startswith(f"vpipe-run: error: {config}: not a vpipe run config (expected a ")
    assert err.endswith("top level)\n")
