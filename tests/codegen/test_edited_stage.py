"""An error raised in a stage file is the user's when they edited the file, vpipe's when not:
`edits_blamed` tells the two apart by the sha256 vpipe-gen recorded."""

import hashlib
import importlib.util
from pathlib import Path

import pytest

from vpipe.common.errors import VpipeError
from vpipe.common.stages import edits_blamed

SOURCE = "def forward(x):\n    y = x + 1\n    return y * scale\n"


def _forward(path: Path):
    spec = importlib.util.spec_from_file_location("edited_stage", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.forward


def test_an_error_in_an_edited_file_names_its_line(tmp_path):
    path = tmp_path / "stage_0.py"
    path.write_text(SOURCE)
    written = hashlib.sha256(b"def forward(x):\n    return x\n").hexdigest()  # before the edit
    with pytest.raises(VpipeError) as caught, edits_blamed(path, written):
        _forward(path)(1)
    assert str(caught.value) == (
        f"{path} line 3: NameError: name 'scale' is not defined (the file was edited since "
        "vpipe-gen wrote it: fix the edit, or regenerate it with vpipe-gen)"
    )


def test_an_error_in_a_file_as_generated_stays_a_bug(tmp_path):
    path = tmp_path / "stage_0.py"
    path.write_text(SOURCE)
    with pytest.raises(NameError), edits_blamed(path, hashlib.sha256(SOURCE.encode()).hexdigest()):
        _forward(path)(1)


def test_an_error_raised_elsewhere_is_not_the_edits(tmp_path):
    path = tmp_path / "stage_0.py"
    path.write_text(SOURCE)
    with pytest.raises(ZeroDivisionError), edits_blamed(path, "0" * 64):
        _ = 1 / 0
