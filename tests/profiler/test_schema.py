"""The profile file: YAML round trip and validation with clear errors."""

import dataclasses
import re

import pytest
import yaml

from vpipe.common.errors import VpipeError
from vpipe.common.modelfile import load_model_file
from vpipe.profiler.profiling import ProfileSettings, profile_model
from vpipe.profiler.schema import SCHEMA_VERSION, load_profile, save_profile


@pytest.fixture(scope="module")
def profile(request):
    fixtures = request.config.rootpath / "tests" / "profiler" / "fixtures"
    settings = ProfileSettings(batch_size=4, device="cpu", repeats=1, warmup=0, min_time_s=0.0)
    return profile_model(load_model_file(str(fixtures / "handbuilt.py")), settings)


def test_round_trip_through_yaml(profile, tmp_path):
    path = tmp_path / "profile.yaml"
    save_profile(profile, path)
    again = load_profile(path)
    assert again == profile
    assert again.graph_sha256 == profile.graph_sha256
    assert yaml.safe_load(path.read_text())["schema_version"] == SCHEMA_VERSION


def test_records_where_it_came_from(profile):
    assert profile.source.endswith("handbuilt.py") and profile.source_kind == "model"
    assert profile.device == "cpu" and profile.dtype == "float32" and profile.batch_size == 4
    assert profile.torch_version and profile.seed == 0 and len(profile.source_sha256) == 64
    assert profile.outputs == (profile.nodes[-1].name,)


def test_wrong_schema_version(profile, tmp_path):
    data = profile.to_dict() | {"schema_version": 99}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(VpipeError, match="schema_version 99"):
        load_profile(path)


def test_edited_graph_is_detected(profile, tmp_path):
    data = profile.to_dict()
    data["nodes"][1]["target"] = "Conv3d"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(VpipeError, match="graph_sha256"):
        load_profile(path)


def test_backward_edge_is_rejected(profile):
    nodes = list(profile.nodes)
    nodes[1] = dataclasses.replace(nodes[1], inputs=(nodes[3].name,))
    with pytest.raises(VpipeError, match="not an earlier node"):
        dataclasses.replace(profile, nodes=tuple(nodes))


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2]", "expected a mapping"),
        (
            f"schema_version: {SCHEMA_VERSION}\nsource: x\n",
            "missing field source_kind, device, dtype",
        ),
        ("a: [", "not valid YAML"),
    ],
)
def test_malformed_files(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(VpipeError, match=message):
        load_profile(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (("batch_size", "8"), "batch_size: expected a whole number, got '8' (str)"),
        (("batch_size", 0), "batch_size: 0 is below 1"),
        (("nodes", 2, "param_bytes", -4), "nodes[2].param_bytes: -4 is below 0"),
        (("nodes", 1, "forward_ms", float("nan")), "nodes[1].forward_ms: nan is not a finite"),
        (("nodes", 1, "outputs", 0, "shape", 1, -1), "nodes[1].outputs[0].shape[1]: -1 is below 0"),
        (("nodes", 1, "inputs", "x"), "nodes[1].inputs: expected a list, got 'x'"),
        (("nodes", 1, "saved_bytes", [1]), "nodes[1].saved_bytes: expected a whole number"),
        (("whole_model", "forward_ms", True), "whole_model.forward_ms: expected a number"),
        (("nodes", 0, "colour", "red"), "nodes[0]: unknown field colour"),
        (("nodes", 3, "name", "_1"), "profile has two nodes named '_1'"),
        (("nodes", []), "profile has no nodes"),
    ],
    ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else None,
)
def test_every_field_is_checked_on_load(profile, tmp_path, edit, message):
    """A field of the wrong kind or out of range names itself, its path and the fix."""
    data = profile.to_dict()
    *route, key, value = edit
    target = data
    for step in route:
        target = target[step]
    target[key] = value
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(VpipeError, match=re.escape(message)) as err:
        load_profile(path)
    assert str(err.value).startswith(f"{path}: ") and "re-run vpipe-profile" in str(err.value)
