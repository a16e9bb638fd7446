"""The CUDA path: profiling with CUDA events, stages on a GPU, peak memory from CUDA's allocator.

Skipped where PyTorch sees no GPU (every machine these tests were written on): nothing here has
run yet. scripts/gpu_check.sh (`make gpu-check`) runs these and a profile -> plan -> gen ->
train -> report pass on a GPU.

Two stages on one GPU: NCCL refuses two ranks on one device ("Duplicate GPU detected"), so
where a machine has fewer GPUs than stage processes the runtime shares them and runs gloo, with
the stages' messages copied through host memory (gloo's send and receive take CPU tensors only;
runtime/launch.py `_join_group`, runtime/links.py). The one-GPU tests pin the stages to one GPU
(CUDA_VISIBLE_DEVICES), so they take that path on any machine; NCCL, one GPU per stage, is
checked only where there are two GPUs.
"""

import csv
import os
from pathlib import Path

import pytest
import torch

from vpipe.codegen.schema import load_pipeline
from vpipe.profiler.schema import load_profile
from vpipe.runtime.cli import main as train_main
from vpipe.runtime.report import build_report
from vpipe.runtime.settings import load_settings
from vpipe.runtime.stagelog import load_stage_log

from ..codegen.pipelines import generate, plan, profile
from ..runtime.references import LR, replay, single_process
from ..runtime.test_tied import generate_tied

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: the GPU path has not run on this machine"
)

MICROBATCHES = 3
STEPS = 3
RTOL = 1e-4  # the pipeline against one process on the same GPU (kernels may add in any order)
TIMEOUT_S = "120"  # a stage that waits this long on a neighbour fails the run: no test hangs


@pytest.fixture(scope="module")
def gpt_profile(tmp_path_factory):
    """The bundled GPT profiled on the GPU (`vpipe-profile --device cuda`)."""
    return profile("gpt", tmp_path_factory.mktemp("gpt"), batch_size=2, device="cuda")


@pytest.fixture
def one_gpu(monkeypatch):
    """The stage processes see one GPU, the first this process sees: both stages share it."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    first = visible.split(",")[0] if visible else "0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", first)


def test_profile_on_cuda_is_timed_and_weighed_on_the_gpu(gpt_profile):
    measured = load_profile(gpt_profile)
    assert measured.device == torch.cuda.get_device_name(0)  # the GPU's name, not "cpu"
    assert measured.threads is None and measured.link is None  # CPU-only figures
    whole = measured.whole_model
    assert whole is not None and whole.forward_ms > 0 and whole.backward_ms > 0
    assert whole.peak_bytes is not None and whole.peak_bytes > 0
    assert sum(n.forward_ms for n in measured.nodes) > 0
    assert sum(n.backward_ms for n in measured.nodes) > 0
    assert all(n.workspace_bytes is not None for n in measured.nodes)  # CUDA only
    assert measured.loss is not None and measured.loss.forward_ms > 0


def _train(out: Path, *extra: str) -> Path:
    argv = [str(out / "pipeline.yaml"), "--steps", str(STEPS), "--lr", str(LR)]
    argv += ["--optimizer", "momentum", "--threads", "1", "--timeout-s", TIMEOUT_S]
    assert train_main([*argv, *extra]) == 0
    return out


def _check_equals_single_process(out: Path) -> None:
    """Each step's loss and every final weight equal gradient accumulation in one process on
    the same GPU."""
    pipeline = load_pipeline(out / "pipeline.yaml")
    expected, losses = single_process(pipeline, STEPS, device="cuda")
    with open(out / "run" / "metrics.csv") as file:
        logged = [float(row["loss"]) for row in csv.DictReader(file)]
    assert logged == pytest.approx(losses, rel=RTOL)
    seen = set()
    for k in range(len(pipeline.stages)):
        final = torch.load(out / "run" / f"final_stage_{k}.pt", map_location="cpu")
        for name, tensor in final.items():
            reference = expected[name].detach().cpu()
            torch.testing.assert_close(tensor, reference, rtol=RTOL, atol=1e-5)
            seen.add(name)
    assert seen == set(expected)


def _check_ran_on_the_gpu(out: Path) -> None:
    """Every stage logged the GPU and the allocator's peak; the report reads them back."""
    pipeline = load_pipeline(out / "pipeline.yaml")
    for k in range(len(pipeline.stages)):
        log = load_stage_log(out / "run" / f"stage_{k}.yaml")
        assert log.device == "cuda"
        assert log.peak_memory_bytes is not None and log.peak_memory_bytes > 0
    used = load_settings(out / "run" / "settings.yaml", "train again")
    report = build_report(pipeline, out, used)
    for stage in report.stages:
        assert not stage.on_cpu and stage.measured_ms > 0
        assert stage.measured_bytes is not None and stage.measured_bytes > 0
    assert train_main([str(out / "pipeline.yaml"), "--report"]) == 0
    assert (out / "run" / "report.md").is_file()


def test_two_stages_on_one_gpu_train_like_one_process(gpt_profile, tmp_path, one_gpu, capfd):
    argv = ["--schedule", "1f1b", "--microbatches", str(MICROBATCHES)]
    out = generate(plan(gpt_profile, 2, tmp_path, False, *argv), tmp_path / "out")
    _train(out)
    printed = capfd.readouterr().out.splitlines()
    for rank in range(2):  # one GPU for two processes: gloo, messages through host memory
        line = f"Finished initializing process group; backend: gloo, rank: {rank}, world_size: 2"
        assert line in printed
    _check_equals_single_process(out)
    _check_ran_on_the_gpu(out)


def test_tied_copies_on_one_gpu_stay_equal_under_1f1b(tmp_path, monkeypatch, one_gpu):
    """The all-reduce of the tied embedding's gradients takes CUDA tensors under gloo."""
    monkeypatch.chdir(tmp_path)
    pipeline = generate_tied(2)
    assert pipeline.tied and pipeline.tied[0].stages == (0, 1)
    _train(Path("out"))
    first = torch.load("out/run/final_stage_0.pt", map_location="cpu")["embed.weight"]
    second = torch.load("out/run/final_stage_1.pt", map_location="cpu")["head.weight"]
    assert torch.equal(first, second)
    expected, _ = single_process(pipeline, STEPS, device="cuda")
    torch.testing.assert_close(first, expected["embed.weight"].detach().cpu(), rtol=RTOL, atol=1e-5)


def test_tied_copies_on_one_gpu_stay_equal_under_asp(tmp_path, monkeypatch, one_gpu):
    """asp sends the tied gradients and their sums point to point (through host memory here):
    the copies end bit-equal and follow the one-process replay (on the CPU: within RTOL)."""
    monkeypatch.chdir(tmp_path)
    generate_tied(2, "asp")
    steps = 6
    train = ["out/pipeline.yaml", "--steps", str(steps), "--lr", str(LR), "--threads", "1"]
    assert train_main([*train, "--optimizer", "sgd", "--timeout-s", TIMEOUT_S]) == 0
    final = [torch.load(f"out/run/final_stage_{k}.pt", map_location="cpu") for k in range(2)]
    assert torch.equal(final[0]["embed.weight"], final[1]["head.weight"])
    expected = replay(Path("out"), steps)
    for k in range(2):
        for name, tensor in final[k].items():
            torch.testing.assert_close(tensor, expected[k][name], rtol=RTOL, atol=1e-5)


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2,
    reason="one GPU: NCCL needs a GPU per stage (two here)",
)
def test_two_stages_on_two_gpus_over_nccl(gpt_profile, tmp_path, capfd):
    argv = ["--schedule", "1f1b", "--microbatches", str(MICROBATCHES)]
    out = generate(plan(gpt_profile, 2, tmp_path, False, *argv), tmp_path / "out")
    _train(out)
    printed = capfd.readouterr().out.splitlines()
    for rank in range(2):
        line = f"Finished initializing process group; backend: nccl, rank: {rank}, world_size: 2"
        assert line in printed
    _check_equals_single_process(out)
    _check_ran_on_the_gpu(out)
