"""Measured times follow the work: layers of 1x, 4x and 16x the FLOPs time in that order."""

from vpipe.profiler.modelfile import load_model_file
from vpipe.profiler.profiling import ProfileSettings, profile_model


def test_times_order_with_flops(fixtures):
    settings = ProfileSettings(batch_size=512, device="cpu", repeats=9, warmup=3)
    profile = profile_model(load_model_file(str(fixtures / "three_widths.py")), settings)
    small, medium, large = [n for n in profile.nodes if n.target == "Linear"]
    assert small.forward_ms < medium.forward_ms < large.forward_ms
    assert small.backward_ms < medium.backward_ms < large.backward_ms
    assert profile.whole_model is not None and profile.whole_model.compute_ms > 0
