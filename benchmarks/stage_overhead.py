"""What a running stage pays beyond its layers: each action of a 2-stage asp pipeline against the
same generated stage modules trained in two plain loops at once.

    python benchmarks/stage_overhead.py [--model resnet] [--rounds 4] [--steps 300]

Why: on the eighth session's host ResNet's stages ran 13% over their profiles in the
throughput benchmark, where GPT's ran at theirs (docs/benchmarks.md). The plain loops are one
process per stage, one thread each, both at once as the pipeline's stages run, with no gloo and
no runtime: stage 0 makes its batch and runs forward, then backward from ones and an SGD step;
stage 1 runs forward on a stored copy of stage 0's outputs and the loss, then backward and a
step. Each round runs the pair and then the pipeline, back to back (the host drifts by 20-30%
within a minute, so only rounds close in time compare). Per action it prints the pipeline's
main-thread CPU milliseconds (its events' `main_s`), the pair's (`time.thread_time`), their
ratio, and the link work the plan predicts for the action (half its stage's `transfer_ms`): the
part of the difference the cost model counts.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from measuring import samples_per_s

from vpipe.codegen.cli import main as generate_main
from vpipe.codegen.schema import Pipeline, load_pipeline
from vpipe.common.modelfile import load_model_file
from vpipe.common.stages import load_stage
from vpipe.planner.cli import main as plan_main
from vpipe.profiler.cli import main as profile_main
from vpipe.runtime.events import read_events

BATCH = {"mlp": 32, "gpt": 8, "resnet": 4, "widehead": 8}
WARMUP = 20  # actions left out at the start of each loop and of each pipeline stage
ACTIONS = ("F0", "B0", "F1", "B1")


def prepare(model: str, folder: Path) -> Path:
    """Profile `model` as the throughput benchmark does, plan 2 stages under asp, generate."""
    profile, plan, out = folder / "profile.yaml", folder / "plan.yaml", folder / "asp"
    argv = [f"vpipe.models.{model}", "-o", str(profile), "-q", "--device", "cpu"]
    argv += ["--threads", "1", "--beside", "1", "--batch-size", str(BATCH[model])]
    assert profile_main(argv) == 0
    argv = [str(profile), "--gpus", "2", "--stages", "2", "--schedule", "asp"]
    assert plan_main([*argv, "-o", str(plan), "-q"]) == 0
    assert generate_main([str(plan), "-o", str(out), "-q"]) == 0
    return out


def plain_loop(out: Path, stage: int, steps: int) -> tuple[float, float]:
    """Median thread-CPU ms of `stage`'s forward and of its backward with the SGD step, in a
    plain loop over the generated modules (stage 1 on a stored copy of stage 0's outputs)."""
    torch.set_num_threads(1)
    pipeline = load_pipeline(out / "pipeline.yaml")
    model_file = load_model_file(pipeline.model)
    specs = pipeline.stages
    modules = [load_stage(out, s.module, s.weights, pipeline.model) for s in specs]
    optimizer = torch.optim.SGD(modules[stage].parameters(), lr=1e-3)

    def own(spec_index: int, step: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        batch = model_file.batch(pipeline.batch_size, step)
        inputs = dict(batch.inputs)
        return [inputs[k] for k in specs[spec_index].batch_inputs], batch.target

    with torch.no_grad():
        stored = [t.detach() for t in _tuple(modules[0](*own(0, 0)[0]))]
    forwards, backwards = [], []
    for step in range(WARMUP + steps):
        inputs, target = own(stage, step)
        start = time.thread_time()
        if stage == 0:
            outputs = _tuple(modules[0](*inputs))
            middle = time.thread_time()
            torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])
        else:
            received = [t.clone().requires_grad_(t.is_floating_point()) for t in stored]
            output = modules[1](*inputs, *received)
            loss = model_file.loss_fn(output, target)
            middle = time.thread_time()
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        end = time.thread_time()
        if step >= WARMUP:
            forwards.append(middle - start)
            backwards.append(end - middle)
    return statistics.median(forwards) * 1e3, statistics.median(backwards) * 1e3


def _tuple(value: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)


def pair(out: Path, steps: int) -> list[float]:
    """Both stages' plain loops at once, one process each: F0, B0, F1, B1 (ms)."""
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--loop", str(out), str(k), str(steps)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    return [float(x) for child in children for x in child.communicate()[0].split()]


def pipeline_actions(out: Path, steps: int) -> list[float]:
    """Train the pipeline for `steps` steps; each action's median main-thread CPU ms."""
    samples_per_s(out, steps)
    medians = []
    for k in range(2):
        events = [
            e for e in read_events(out / "run" / f"events_stage{k}.csv") if e.microbatch >= WARMUP
        ]
        for kind in ("F", "B"):
            medians.append(statistics.median(e.main_s for e in events if e.action == kind) * 1e3)
    return medians


def predicted_link_ms(pipeline: Pipeline) -> list[float]:
    """Per action, F0, B0, F1, B1: half its stage's predicted link work."""
    return [s.predicted.transfer_ms / 2 for s in pipeline.stages for _ in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet", choices=list(BATCH))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per loop and run")
    parser.add_argument("--loop", nargs=3, help=argparse.SUPPRESS)  # a child: out stage steps
    args = parser.parse_args()
    if args.loop:
        out, stage, steps = args.loop
        print(*(f"{ms:.4f}" for ms in plain_loop(Path(out), int(stage), int(steps))))
        return
    out = prepare(args.model, Path(tempfile.mkdtemp(prefix="vpipe-overhead-")))
    link = predicted_link_ms(load_pipeline(out / "pipeline.yaml"))
    ratios: list[list[float]] = []
    print(f"{args.model}, 2 stages, asp; ms of main-thread CPU per action, pipeline / plain pair")
    for round_ in range(args.rounds):
        plain = pair(out, args.steps)
        running = pipeline_actions(out, WARMUP + args.steps)
        ratios.append([r / p for r, p in zip(running, plain, strict=True)])
        cells = "  ".join(
            f"{name} {r:.2f}/{p:.2f}={r / p:.2f}"
            for name, r, p in zip(ACTIONS, running, plain, strict=True)
        )
        print(f"round {round_}: {cells}", flush=True)
    medians = [statistics.median(column) for column in zip(*ratios, strict=True)]
    print(
        "median ratio: "
        + "  ".join(f"{name} {m:.2f}" for name, m in zip(ACTIONS, medians, strict=True))
    )
    print(
        "predicted link work per action: "
        + "  ".join(f"{name} {ms:.3f} ms" for name, ms in zip(ACTIONS, link, strict=True))
    )


if __name__ == "__main__":
    main()
