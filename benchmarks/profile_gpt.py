"""Profile the 12-layer GPT of models/ (d_model 256, seq 128) and print its honesty figures.

    python benchmarks/profile_gpt.py [--device cpu|cuda] [--batch-size 8]

Prints how long profiling took, the sum of per-node forward+backward times, one measured
whole-model forward+backward, and their ratio (1.0: the parts add up to the whole). On CUDA it
adds the whole model's peak memory. The acceptance targets: under 60 s on a 2-core CPU, and the
ratio within 25% of 1.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

from vpipe.common.modelfile import ModelFile, default_loss
from vpipe.common.units import human_bytes
from vpipe.models import gpt
from vpipe.profiler.profiling import ProfileSettings, profile_model

GPT12 = gpt.GPTConfig(vocab_size=512, seq_len=128, d_model=256, n_heads=8, n_layers=12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model_file = ModelFile(
        source="vpipe.models.gpt (12 layers, d_model 256, seq 128)",
        build_model=functools.partial(gpt.build_model, GPT12),
        make_batch=functools.partial(gpt.make_batch, config=GPT12),
        loss_fn=default_loss,
        sha256=None,
    )
    settings = ProfileSettings(batch_size=args.batch_size, device=args.device, repeats=args.repeats)
    start = time.perf_counter()
    profile = profile_model(model_file, settings)
    seconds = time.perf_counter() - start
    whole = profile.whole_model
    assert whole is not None
    rows = [
        ("device", profile.device),
        ("torch threads", str(torch.get_num_threads())),
        ("batch size", str(profile.batch_size)),
        ("nodes", str(len(profile.nodes))),
        ("profiling time (s)", f"{seconds:.1f}"),
        ("sum of node fwd+bwd (ms)", f"{profile.node_compute_ms:.1f}"),
        ("whole model fwd+bwd (ms)", f"{whole.compute_ms:.1f}"),
        ("honesty: node sum / whole", f"{profile.honesty:.3f}"),
    ]
    if whole.peak_bytes is not None:
        rows.append(("whole model peak memory", human_bytes(whole.peak_bytes)))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
