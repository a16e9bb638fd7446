"""vpipe's runtime against torch.distributed.pipelining on the same split, in one run.

    python benchmarks/runtime_vs_pipelining.py [--stages 2] [--steps 30] [--microbatches 4]

Profiles the bundled GPT (micro-batch 8) on CPU, plans it for `--stages` stages under 1f1b,
generates the stage files, then trains the same generated stages, same weights, same data and
the same number of samples four ways, each with one gloo process per stage and one thread per
process: vpipe 1f1b, vpipe asp, pipelining Schedule1F1B and ScheduleGPipe. Prints samples/s
and the ratios against Schedule1F1B (targets, runtime issue: vpipe 1f1b >= 1.0x, asp >= 1.1x).
Throughput is measured on the last stage from a barrier after every stage is built; each runner
runs `--rounds` times, interleaved, and the median counts (this machine's speed drifts).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from measuring import samples_per_s

from vpipe.codegen.cli import main as generate_main
from vpipe.codegen.schema import load_pipeline
from vpipe.common.modelfile import load_model_file
from vpipe.common.stages import load_stage
from vpipe.planner.cli import main as plan_main
from vpipe.profiler.cli import main as profile_main
from vpipe.runtime.launch import on_this_machine


class Contiguous(torch.nn.Module):
    """A generated stage whose outputs are made contiguous: pipelining sends them as they are,
    and gloo refuses a strided view (a transposed activation at some 4-stage cuts); vpipe's
    runtime makes the same copy before it sends."""

    def __init__(self, stage: torch.nn.Module) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t.contiguous() for t in self.stage(*args))


def pipelining_worker(out: str, schedule_name: str, steps: int, result: str) -> None:
    """One rank of torch.distributed.pipelining over vpipe's generated stage."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    pipeline = load_pipeline(Path(out) / "pipeline.yaml")
    model_file = load_model_file(pipeline.model)
    spec = pipeline.stages[rank]
    module = load_stage(out, spec.module, spec.weights, pipeline.model)

    # shapes given, not inferred: inference would allocate receive buffers with the strides of
    # the tensors seen (gloo refuses a non-contiguous buffer)
    def examples(specs):
        made = (torch.empty(s.shape, dtype=getattr(torch, s.dtype)) for s in specs)
        return tuple(t.requires_grad_(t.is_floating_point()) for t in made)

    stage = PipelineStage(
        Contiguous(module),
        rank,
        world,
        torch.device("cpu"),
        input_args=examples(spec.inputs),
        output_args=examples(spec.outputs),
    )
    m = pipeline.microbatches

    def loss_fn(output, target):
        return model_file.loss_fn(output[0] if isinstance(output, tuple) else output, target)

    kind = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}[schedule_name]
    schedule = kind(stage, m, loss_fn=loss_fn)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    dist.barrier()
    start = time.perf_counter()
    for step in range(steps):
        batches = [model_file.batch(pipeline.batch_size, step * m + j) for j in range(m)]
        inputs = torch.cat([b.args[0] for b in batches])
        target = torch.cat([b.target for b in batches])
        optimizer.zero_grad()
        if rank == 0:
            schedule.step(inputs)
        elif rank == world - 1:
            schedule.step(target=target)
        else:
            schedule.step()
        optimizer.step()
    seconds = time.perf_counter() - start
    if rank == world - 1:
        Path(result).write_text(str(steps * m * pipeline.batch_size / seconds))
    dist.barrier()
    dist.destroy_process_group()


def run_pipelining(out: Path, schedule: str, steps: int, stages: int) -> float:
    result = out / f"pipelining_{schedule}.txt"
    on_this_machine(stages, pipelining_worker, str(out), schedule, steps, str(result))
    return float(result.read_text())


def vpipe_rate(out: Path, schedule: str, steps: int) -> float:
    """vpipe's runtime with the optimizer the pipelining workers use (SGD, momentum 0.9)."""
    flags = ("--schedule", schedule, "--lr", "0.01", "--optimizer", "momentum")
    return samples_per_s(out, steps, *flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30, help="synchronous steps")
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each; the median counts")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vpipe-bench-"))
    profile = work / "profile.yaml"
    assert profile_main(["vpipe.models.gpt", "-o", str(profile), "-q", "--device", "cpu"]) == 0
    plan = work / "plan.yaml"
    argv = [
        str(profile),
        "--gpus",
        str(args.stages),
        "--stages",
        str(args.stages),
        "--schedule",
        "1f1b",
    ]
    assert plan_main([*argv, "--microbatches", str(args.microbatches), "-o", str(plan), "-q"]) == 0
    out = work / "out"
    assert generate_main([str(plan), "-o", str(out), "-q"]) == 0
    samples = args.steps * args.microbatches  # micro-batches: the same work for every runner
    runners = {
        "pipelining Schedule1F1B": lambda: run_pipelining(out, "1f1b", args.steps, args.stages),
        "pipelining ScheduleGPipe": lambda: run_pipelining(out, "gpipe", args.steps, args.stages),
        "vpipe 1f1b": lambda: vpipe_rate(out, "1f1b", args.steps),
        "vpipe asp": lambda: vpipe_rate(out, "asp", samples),
    }
    measured: dict[str, list[float]] = {name: [] for name in runners}
    for round_ in range(args.rounds):  # interleaved, so drift in machine speed hits all alike
        names = list(runners) if round_ % 2 == 0 else list(reversed(runners))
        for name in names:
            measured[name].append(runners[name]())
    rates = {name: statistics.median(values) for name, values in measured.items()}
    baseline = rates["pipelining Schedule1F1B"]
    print(
        f"\nGPT, {args.stages} stages, {args.microbatches} micro-batches of 8, gloo on CPU, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"{'runner':<26} {'samples/s':>10} {'vs Schedule1F1B':>16}")
    for name, rate in rates.items():
        print(f"{name:<26} {rate:>10.1f} {rate / baseline:>15.2f}x")


if __name__ == "__main__":
    main()
