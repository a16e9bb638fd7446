"""Tests for importing PipeDream graph.txt profiles (vpipe.profiler.pipedream)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import pytest

from vpipe.common.errors import VpipeError
from vpipe.profiler.pipedream import import_pipedream
from vpipe.profiler.schema import load_profile, save_profile

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "profiles" / "pipedream"
NAMES = [
    "alexnet",
    "gnmt",
    "gnmt_large",
    "resnet18",
    "resnet50",
    "resnext50",
    "squeezenet1_0",
    "vgg16",
]


def _shared(name: str) -> Path:
    path = SHARED / f"{name}.graph.txt"
    if not path.is_file():
        pytest.skip(f"shared PipeDream profile {path} is absent (needs the ../shared checkout)")
    return path


@pytest.mark.parametrize("name", NAMES)
def test_shared_profile_matches_file(name: str, tmp_path: Path) -> None:
    path = _shared(name)
    text = path.read_text()
    # Counted straight from the text, independently of the importer's parser.
    node_lines = re.findall(r"^node\d+ -- .*$", text, flags=re.MULTILINE)
    edges = set(re.findall(r"^\t(node\d+) -- (node\d+)$", text, flags=re.MULTILINE))
    forward = sum(map(float, re.findall(r"forward_compute_time=([0-9.]+)", text)))
    backward = sum(map(float, re.findall(r"backward_compute_time=([0-9.]+)", text)))

    profile = import_pipedream(path, optimizer="adam", batch_size=128)

    assert len(profile.nodes) == len(node_lines)
    assert sum(len(node.inputs) for node in profile.nodes) == len(edges)
    assert {(src, node.name) for node in profile.nodes for src in node.inputs} == edges
    assert sum(node.forward_ms for node in profile.nodes) == pytest.approx(forward)
    assert sum(node.backward_ms for node in profile.nodes) == pytest.approx(backward)
    seen: set[str] = set()
    for node in profile.nodes:
        assert set(node.inputs) <= seen, f"{node.name} comes before one of its inputs"
        seen.add(node.name)
    sinks = {node.name for node in profile.nodes} - {src for src, _ in edges}
    assert set(profile.outputs) == sinks
    assert profile.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert all(node.saved_bytes is None for node in profile.nodes)
    assert profile.optimizer == "adam"  # whose state the planner counts

    save_profile(profile, tmp_path / "profile.yaml")
    loaded = load_profile(tmp_path / "profile.yaml")
    # the source is recorded relative to the profile: read back, it names the same file, though
    # not always spelt the same (../shared may be a link)
    assert Path(loaded.source).samefile(profile.source)
    assert dataclasses.replace(loaded, source=profile.source) == profile
    assert import_pipedream(path, optimizer="adam", batch_size=128) == profile  # deterministic


@pytest.mark.parametrize(("name", "expected"), [("resnet18", 36864 * 4), ("vgg16", 36928 * 4)])
def test_parameter_size_is_bytes(name: str, expected: int) -> None:
    """Conv2d(64, 64, 3x3) holds 36864 weights (+64 bias in VGG), float32: 4 bytes each."""
    profile = import_pipedream(_shared(name))
    convs = [n for n in profile.nodes if n.target.startswith("Conv2d(64, 64, kernel_size=(3, 3)")]
    assert convs and all(n.param_bytes == expected for n in convs)


SMALL = (
    "node10 -- Linear(in_features=4, out_features=2, bias=True) -- forward_compute_time=1.5, "
    "backward_compute_time=2.5, activation_size=[8.0; 4.0; 4.0], parameter_size=40.000\n"
    "node1 -- Input0 -- forward_compute_time=0.25, backward_compute_time=0.000, "
    "activation_size=16.0, parameter_size=0.000\n"
    "node2 -- __getitem__(0) -- forward_compute_time=0.000, backward_compute_time=0.000, "
    "activation_size=16.0, parameter_size=0.000\n"
    "node3 -- hidden -- forward_compute_time=0.000, backward_compute_time=0.000, "
    "activation_size=0.0, parameter_size=0.000\n"
    "\tnode1 -- node2\n"
    "\tnode2 -- node10\n"
    "\tnode1 -- node10\n"
)


def test_small_file_mapping(tmp_path: Path) -> None:
    path = tmp_path / "small.graph.txt"
    path.write_text(SMALL)
    profile = import_pipedream(path, optimizer="momentum")
    assert [n.name for n in profile.nodes] == ["node1", "node2", "node3", "node10"]
    first, _, hidden, linear = profile.nodes
    assert (first.op, first.target, first.forward_ms) == ("placeholder", "Input0", 0.25)
    assert (hidden.op, hidden.inputs) == ("layer", ())
    assert linear.target == "Linear(in_features=4, out_features=2, bias=True)"
    assert linear.inputs == ("node1", "node2")
    assert (linear.output_bytes, linear.param_bytes, linear.grad_bytes) == (16, 40, 40)
    assert profile.optimizer == "momentum"
    assert (linear.buffer_bytes, linear.outputs, linear.saved_bytes) == (0, (), None)
    assert profile.outputs == ("node3", "node10")
    assert (profile.source, profile.source_kind, profile.dtype) == (
        str(path),
        "pipedream",
        "float32",
    )
    assert profile.torch_version is None and profile.batch_size is None
    assert len(profile.notes) == 1 and "unknown" in profile.notes[0]


NODE = (
    "node{} -- ReLU(inplace) -- forward_compute_time=1.0, backward_compute_time=1.0, "
    "activation_size=4.0, parameter_size=0.0\n"
)


@pytest.mark.parametrize(
    ("case", "text", "expected"),
    [
        ("empty", "", "empty"),
        ("blank", "\n  \n", "empty"),
        ("unparsable node", NODE.format(1) + "node2 ReLU forward=1\n", "line 2"),
        ("missing field", "node1 -- ReLU -- forward_compute_time=1.0\n", "line 1"),
        ("not a number", NODE.format(1).replace("=1.0,", "=fast,", 1), "not a number"),
        ("bad list", NODE.format(1).replace("=4.0", "=[4.0; x]"), "not a number"),
        ("negative", NODE.format(1).replace("=1.0,", "=-1.0,", 1), "line 1"),
        ("nan", NODE.format(1).replace("=1.0,", "=nan,", 1), "line 1"),
        ("bad edge", NODE.format(1) + "\tnode1 node2\n", "line 2"),
        ("unknown node", NODE.format(1) + NODE.format(2) + "\tnode1 -- node9\n", "'node9'"),
        ("duplicate", NODE.format(1) + NODE.format(2) + NODE.format(1), "line 3"),
        (
            "cycle",
            NODE.format(1) + NODE.format(2) + "\tnode1 -- node2\n\tnode2 -- node1\n",
            "cycle",
        ),
        ("self loop", NODE.format(1) + "\tnode1 -- node1\n", "cycle"),
        ("edges only", "\tnode1 -- node2\n", "node"),
    ],
)
def test_bad_input(tmp_path: Path, case: str, text: str, expected: str) -> None:
    path = tmp_path / "bad.graph.txt"
    path.write_text(text)
    with pytest.raises(VpipeError) as info:
        import_pipedream(path)
    message = str(info.value)
    assert "bad.graph.txt" in message and expected in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VpipeError, match="nothere.graph.txt"):
        import_pipedream(tmp_path / "nothere.graph.txt")


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "binary.graph.txt"
    path.write_bytes(b"\xff\xfe\x00node")
    with pytest.raises(VpipeError, match="binary.graph.txt"):
        import_pipedream(path)


def test_unknown_optimizer(tmp_path: Path) -> None:
    path = tmp_path / "one.graph.txt"
    path.write_text(NODE.format(1))
    with pytest.raises(VpipeError, match="adagrad"):
        import_pipedream(path, optimizer="adagrad")
