"""Busy neighbours: other processes training the model while the profiler times it.

On a CPU the stages of a pipeline share the machine: while one stage computes, the others
compute beside it on the other cores, and they share the caches and the memory bus. Timed on an
otherwise idle machine a stage runs faster than it does there: a whole forward and backward
beside one process training the same model took 3-9% longer on the 2-core development VM (4%
on `resnet` and `gpt`, 6-9% on `widehead`, whose 8 MiB embedding and 4 MiB of logits fill the
cache), and in 2-stage pipelines the stages measured 2-10% over profiles taken alone
(docs/benchmarks.md). `vpipe-profile --beside N` times with N such neighbours running, the
other stages of a pipeline of N + 1 on this machine.

A neighbour trains its own copy of the model (the model file's batches and loss, SGD at a
learning rate of 0 so that it stays as built) with the profile's threads, until the profiler
stops it. It exits by itself if the profiler dies.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from vpipe.common.errors import VpipeError

WARM_STEPS = 2  # steps a neighbour trains before it says it is ready
START_TIMEOUT_S = 300.0  # building a large model takes a while; a hang must not


@contextlib.contextmanager
def busy_neighbours(
    source: str, count: int, batch_size: int, threads: int, seed: int
) -> Iterator[None]:
    """Run `count` processes that train the model file `source` in a loop while the block
    runs; each has trained WARM_STEPS steps before the block starts. A neighbour's output goes
    to files, never to a pipe that a chatty model could fill and so stop it."""
    running: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    with tempfile.TemporaryDirectory(prefix="vpipe-beside-") as folder:
        try:
            for k in range(count):
                ready, errors = Path(folder, f"ready{k}"), Path(folder, f"errors{k}")
                command = [sys.executable, "-m", __name__, source, str(batch_size)]
                command += [str(threads), str(seed), str(ready)]
                with errors.open("wb") as log:
                    process = subprocess.Popen(
                        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
                    )
                running.append((process, ready, errors))
            for process, ready, errors in running:
                _await_ready(process, ready, errors)
            yield
        finally:
            for process, _, _ in running:
                process.kill()
            for process, _, _ in running:
                process.wait()


def _await_ready(process: subprocess.Popen[bytes], ready: Path, errors: Path) -> None:
    """Wait until a neighbour has made its `ready` file; its error, or a hang, is a
    VpipeError."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.exists():
        ended = process.poll() is not None
        if ended or time.monotonic() > deadline:
            process.kill()
            process.wait()
            if not ended:
                raise VpipeError(
                    f"a busy neighbour (--beside) did not train {WARM_STEPS} steps in "
                    f"{START_TIMEOUT_S:.0f} s; profile without --beside"
                )
            last = errors.read_text(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise VpipeError(
                f"a busy neighbour (--beside) stopped before training: {last[0]}; profile "
                "without --beside to see the model's own error"
            )
        time.sleep(0.05)


def train_forever(source: str, batch_size: int, threads: int, seed: int, ready: Path) -> None:
    """Train the model file's model on its batches until the parent process is gone; make
    the file `ready` once WARM_STEPS steps are done."""
    import torch

    from vpipe.common.modelfile import load_model_file

    parent = os.getppid()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model_file = load_model_file(source)
    model = model_file.build_model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    step = 0
    while os.getppid() == parent:
        batch = model_file.batch(batch_size, step)
        loss = model_file.loss_fn(batch.call(model), batch.target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step == WARM_STEPS:
            ready.touch()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a busy neighbour of vpipe-profile --beside")
    parser.add_argument("source")
    parser.add_argument("batch_size", type=int)
    parser.add_argument("threads", type=int)
    parser.add_argument("seed", type=int)
    parser.add_argument("ready", type=Path)
    args = parser.parse_args(argv)
    train_forever(args.source, args.batch_size, args.threads, args.seed, args.ready)


if __name__ == "__main__":
    main()
