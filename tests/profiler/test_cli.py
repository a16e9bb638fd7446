"""vpipe-profile as a user runs it: what it writes (its bad inputs: tests/test_bad_inputs.py)."""

import subprocess
import sys
from pathlib import Path

from vpipe.profiler.cli import main
from vpipe.profiler.schema import load_profile


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_profiles_a_module_name_writes_yaml_and_plot(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    png = tmp_path / "p.png"
    quick = ["--repeats", "1", "--min-time", "0", "--device", "cpu"]  # not quiet: its table
    code, stdout, _ = run(["vpipe.models.mlp", "-o", out, "--plot", png, *quick], capsys)
    assert code == 0
    profile = load_profile(out)
    assert profile.source == "vpipe.models.mlp"
    assert [n.target for n in profile.nodes if n.op == "call_module"][0] == "Linear"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "honesty" in stdout and f"wrote {out}" in stdout


def test_leaf_flag_on_the_command_line(fixtures, tmp_path, capsys):
    out = tmp_path / "p.yaml"
    argv = [fixtures / "untraceable.py", "--leaf", "Gate", "-o", out, "-q", "--repeats", "1"]
    argv += ["--min-time", "0"]
    code, _, _ = run(argv, capsys)
    assert code == 0
    assert "Gate" in [n.target for n in load_profile(out).nodes]


def test_imports_pipedream_profiles(tmp_path, capsys):
    graph = tmp_path / "g.txt"
    graph.write_text(
        "node1 -- Input0 -- forward_compute_time=0.000, backward_compute_time=0.000, "
        "activation_size=64.0, parameter_size=0.000\n"
        "node2 -- Linear(4, 4) -- forward_compute_time=1.5, backward_compute_time=2.5, "
        "activation_size=64.0, parameter_size=80.000\n"
        "\tnode1 -- node2\n"
    )
    out = tmp_path / "p.yaml"
    code, _, _ = run(["--import-pipedream", graph, "-o", out, "-q"], capsys)
    assert code == 0
    assert load_profile(out).node("node2").compute_ms == 4.0


def test_installed_command_prints_no_traceback(tmp_path):
    """The console script itself, in a fresh process, as a user meets it."""
    command = Path(sys.executable).parent / "vpipe-profile"  # this environment's script
    result = subprocess.run(
        [str(command), str(tmp_path / "missing.py")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "not found" in result.stderr
