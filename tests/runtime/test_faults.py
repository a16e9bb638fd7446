"""A dead stage never hangs the others: they exit non-zero, naming it, within the timeout."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..codegen.pipelines import generate, plan, profile

TIMEOUT_S = 30


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(out: Path, world: int, *extra: str) -> list[subprocess.Popen]:
    """`world` ranks of `out`'s pipeline started the way torchrun starts them (one per machine,
    say), on a run too long to end, with vpipe-train's options `extra`; returned once training
    is under way."""
    train = shutil.which("vpipe-train", path=str(Path(sys.executable).parent))
    env = {
        **os.environ,
        "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_port()),
    }
    argv = [
        train,
        str(out / "pipeline.yaml"),
        "--steps",
        "1000000",
        "--threads",
        "1",
        "--timeout-s",
        str(TIMEOUT_S),
        *extra,
    ]
    ranks = []
    for r in range(world):  # rank 0 hosts the rendezvous store: give it a head start
        ranks.append(
            subprocess.Popen(
                argv,
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        time.sleep(1.0)
    metrics = out / "run" / "metrics.csv"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) > 5):
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.2)
    return ranks


def kill_after_checkpoint(
    ranks: list[subprocess.Popen], folder: Path, stages: int, step: int, victim: int
) -> list[str]:
    """SIGKILL rank `victim` as soon as every one of `stages` stages has a checkpoint at `step`
    or later in `folder`; the others' stderr, in rank order, once they stopped, which must be
    within the timeout. Every rank is killed on the way out, whatever happens."""
    from vpipe.runtime import checkpoint

    try:
        deadline = time.monotonic() + 60
        while (checkpoint.newest_complete(folder, stages) or 0) < step:
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.005)
        ranks[victim].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        others = [p for k, p in enumerate(ranks) if k != victim]
        errors = [p.communicate(timeout=TIMEOUT_S + 30)[1] for p in others]
        assert time.monotonic() - killed_at < TIMEOUT_S
        return errors
    finally:
        for process in ranks:
            process.kill()
            process.wait()


def test_killing_one_rank_stops_the_other(tmp_path):
    """Rank 0 of two is killed mid-run; rank 1 must exit non-zero well within --timeout-s,
    saying which stage it lost, in one line naming its log."""
    out = generate(plan(profile("mlp", tmp_path), 2, tmp_path, False), tmp_path / "out")
    ranks = start_ranks(out, 2)
    ranks[0].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = ranks[1].communicate(timeout=TIMEOUT_S + 30)
    assert ranks[1].returncode != 0
    assert time.monotonic() - killed_at < TIMEOUT_S
    # under torchrun each rank says in one line why it stopped, and logs the traceback
    log = out / "run" / "logs" / "stage_1.log"
    assert err.endswith(f"(full traceback: {log})\n"), err
    assert err.splitlines()[-1].startswith("vpipe-train: error: stage 1: lost stage 0: "), err
    assert "Traceback" in log.read_text()
