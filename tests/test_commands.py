"""Every command is installed and answers --help."""

import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ["vpipe-profile", "vpipe-plan", "vpipe-gen", "vpipe-train", "vpipe-run", "vpipe-probe"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    installed = Path(sys.executable).parent / command  # this environment's console script
    result = subprocess.run([str(installed), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {command}")
