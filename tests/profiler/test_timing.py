"""Measured times follow the work: layers of 1x, 4x and 16x the FLOPs time in that order."""

from vpipe.common.modelfile import load_model_file
from vpipe.profiler.profiling import ProfileSettings, profile_model

ATTEMPTS = 3  # the lowest of three medians per node: another busy process only ever adds time


def test_times_order_with_flops(fixtures):
    settings = ProfileSettings(batch_size=512, device="cpu", repeats=7, warmup=2)
    model_file = load_model_file(str(fixtures / "three_widths.py"))
    runs = [profile_model(model_file, settings) for _ in range(ATTEMPTS)]
    layers = [[n for n in run.nodes if n.target == "Linear"] for run in runs]
    forward = [min(run[i].forward_ms for run in layers) for i in range(3)]
    backward = [min(run[i].backward_ms for run in layers) for i in range(3)]
    assert forward[0] < forward[1] < forward[2], forward
    assert backward[0] < backward[1] < backward[2], backward
