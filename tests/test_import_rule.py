"""The import rule between parts (docs/architecture.md).

A part imports only the `schema` modules of the parts upstream of it, and `vpipe.common`; the
planner never imports torch, so it stays fast to import and to test. Parts import each other
through the `vpipe.` namespace only, never as bare top-level packages. `vpipe.run`, above the
four parts, may also import their `cli` modules: it runs the four commands.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = {
    "common": (),
    "models": (),
    "profiler": (),
    "planner": ("profiler",),
    "codegen": ("profiler", "planner"),
    "runtime": ("profiler", "planner", "codegen"),
    "run": ("profiler", "planner", "codegen", "runtime"),
}
# the parts whose `cli` modules a part may import, besides their schemas
COMMANDS = {"run": ("profiler", "planner", "codegen", "runtime")}
# upstream entry points a part may call, besides schemas: the runtime re-plans and regenerates
# a running pipeline's stages (VPipe's virtual layout: runtime/switching.py, runtime/adapt.py)
ENTRY_POINTS = {
    "runtime": ("vpipe.codegen.generate", "vpipe.planner.planning"),
    # vpipe-probe times the runtime's stages from the action log they write
    "run": ("vpipe.runtime.events",),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in a file; relative ones stay relative."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 1:
            found.append((node.lineno, "." * node.level + (node.module or "")))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def violations(part: str) -> list[str]:
    bad = []
    for path in sorted((REPO / part).rglob("*.py")):
        for line, module in imported_modules(path):
            where = f"{path.relative_to(REPO)}:{line} imports {module}"
            if module.startswith(".."):
                bad.append(f"{where} (relative import out of its part; use vpipe.<part>)")
                continue
            head = module.split(".")[0]
            if head in UPSTREAM:
                bad.append(f"{where} (bare top-level name; import it as vpipe.{head})")
            if part == "planner" and head == "torch":
                bad.append(f"{where} (the planner never imports torch)")
            if head != "vpipe":
                continue
            other = module.split(".")[1]
            if other in (part, "common"):
                continue
            if other in UPSTREAM[part] and module.split(".")[2:3] == ["schema"]:
                continue
            if other in COMMANDS.get(part, ()) and module.split(".")[2:3] == ["cli"]:
                continue
            if ".".join(module.split(".")[:3]) in ENTRY_POINTS.get(part, ()):
                continue
            bad.append(
                f"{where} (only vpipe.common, upstream schema modules and, in vpipe.run, the "
                "parts' cli modules are allowed)"
            )
    return bad


@pytest.mark.parametrize("part", UPSTREAM)
def test_part_imports_only_upstream_schemas(part):
    assert violations(part) == []


def test_rule_catches_a_violation(tmp_path, monkeypatch):
    """The checker itself must be able to fail."""
    fake = tmp_path / "planner"
    fake.mkdir()
    (fake / "bad.py").write_text(
        "import torch\nfrom vpipe.profiler.measure import Clock\nfrom ..codegen import x\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = violations("planner")
    assert len(found) == 3 and "never imports torch" in found[0] and "relative" in found[2]


def test_only_run_may_import_the_commands(tmp_path, monkeypatch):
    for part in ("run", "codegen"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "steps.py").write_text(
            "from vpipe.planner.cli import main\nfrom vpipe.runtime.executor import StageExecutor\n"
        )
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert [line.split(" (")[0] for line in violations("run")] == [
        "run/steps.py:2 imports vpipe.runtime.executor.StageExecutor"
    ]
    assert len(violations("codegen")) == 2


def test_planner_and_profile_schema_import_without_torch():
    modules = sorted(
        f"vpipe.planner.{p.stem}" for p in (REPO / "planner").glob("*.py") if p.stem != "__init__"
    )
    code = (
        "import sys, importlib\n"
        f"for name in {modules + ['vpipe.profiler.schema']!r}:\n"
        "    importlib.import_module(name)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120
    )
    assert result.returncode == 0, result.stderr
