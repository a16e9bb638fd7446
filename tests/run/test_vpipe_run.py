"""vpipe-run as a user runs it: one config, four steps, two gloo processes on loopback."""

import subprocess
import sys
from pathlib import Path

CONFIG = """\
schema_version: 1
model: vpipe.models.mlp
output: out
profile: {device: cpu, batch_size: 4, threads: 1, repeats: 1, warmup: 0, quiet: true}
plan: {gpus: 2, stages: 2, schedule: asp, quiet: true}
gen: {quiet: true}
train: {steps: 4, print_every: 2, threads: 1}
"""


def test_one_command_profiles_plans_generates_and_trains(tmp_path):
    config = tmp_path / "run.yml"
    config.write_text(CONFIG)
    command = Path(sys.executable).parent / "vpipe-run"
    result = subprocess.run(
        [str(command), str(config)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    steps = [line for line in lines if line.startswith("vpipe-run: step ")]
    assert [line.split(": ")[2].split()[0] for line in steps] == [
        "vpipe-profile",
        "vpipe-plan",
        "vpipe-gen",
        "vpipe-train",
    ]
    for rank in range(2):  # each whole, on a line of its own
        assert (
            f"Finished initializing process group; backend: gloo, rank: {rank}, world_size: 2"
            in lines
        )
        assert f"[Rank {rank}] Stage: {rank}, Rank in stage: 0" in lines
    assert any(line.startswith("Epoch 0, Iteration 0, Loss: ") for line in lines)
    assert any(line.startswith("Epoch 0, Iteration 2, Loss: ") for line in lines)
    out = tmp_path / "out"
    for made in ("profile.yaml", "plan.yaml", "out/pipeline.yaml", "out/run/metrics.csv"):
        assert (out / made).is_file(), made


def test_a_failing_step_is_one_line_and_keeps_the_steps_before(tmp_path):
    """A memory cap nothing fits fails the plan step: its error, naming the step, is vpipe-run's
    only error line."""
    config = tmp_path / "run.yml"
    config.write_text(CONFIG.replace("{gpus: 2,", "{gpus: 2, memory: 0.000001,"))
    command = Path(sys.executable).parent / "vpipe-run"
    result = subprocess.run(
        [str(command), str(config)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("vpipe-run: error: step 2 (vpipe-plan): no plan fits")
    assert "vpipe-run: step 2 of 4: vpipe-plan" in result.stdout.splitlines()[-1]
    assert (tmp_path / "out" / "profile.yaml").is_file()
    assert not (tmp_path / "out" / "plan.yaml").exists()
