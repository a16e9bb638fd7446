"""docs/commands.md lists every option of every command, and only options that exist.

Under each command's heading (## `vpipe-plan`) a table names one option per row in its first
cell: `-o`, `--output`; `--schedule {asp,1f1b,gpipe}`; or a positional such as `profile`. The
parsers come from each command's `build_parser()`, so a new, renamed or removed option, a
changed list of choices or a changed default fails here until the page says so.
"""

import argparse
import math
import re
from pathlib import Path

import pytest

from vpipe.codegen.cli import build_parser as gen_parser
from vpipe.planner.cli import build_parser as plan_parser
from vpipe.profiler.cli import DEFAULT_BATCH
from vpipe.profiler.cli import build_parser as profile_parser
from vpipe.run.cli import build_parser as run_parser
from vpipe.run.probe import build_parser as probe_parser
from vpipe.runtime.cli import build_parser as train_parser
from vpipe.runtime.settings import defaults as run_defaults

DOC = Path(__file__).resolve().parents[1] / "docs" / "commands.md"

PARSERS = {
    "vpipe-profile": profile_parser,
    "vpipe-plan": plan_parser,
    "vpipe-gen": gen_parser,
    "vpipe-train": train_parser,
    "vpipe-run": run_parser,
    "vpipe-probe": probe_parser,
}

# defaults that live outside argparse (the option's argparse default is None)
OTHER_DEFAULTS = {"vpipe-profile": {"batch_size": DEFAULT_BATCH}, "vpipe-train": run_defaults()}


def sections(text: str) -> dict[str, str]:
    """The text under each `## `vpipe-...`` heading, by command name."""
    parts = re.split(r"^## (.*)$", text, flags=re.MULTILINE)  # [before, heading, body, ...]
    found = {}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        command = re.fullmatch(r"`(vpipe-[a-z]+)`", heading.strip())
        if command:
            found[command.group(1)] = body
    return found


def option_rows(section: str) -> dict[str, list[str]]:
    """Each option string or positional named in a table's first cell -> that row's cells."""
    rows = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        names = re.findall(r"`(-{1,2}[a-z][a-z-]*)", cells[0])
        positional = re.fullmatch(r"`([a-z_]+)`", cells[0])
        for name in names or ([positional.group(1)] if positional else []):
            rows[name] = cells
    return rows


def shown(value: object) -> str:
    """A default as the page writes it: 300.0 as 300, infinity as inf."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def problems(command: str, parser: argparse.ArgumentParser, section: str) -> list[str]:
    """What the page gets wrong about `parser`: options missing from its table or listed there
    but unknown, choices not shown in the option's row, defaults not in its default column."""
    rows = option_rows(section)
    other = OTHER_DEFAULTS.get(command, {})
    found = []
    known = set()
    for action in parser._actions:
        names = action.option_strings or [action.dest]
        known.update(names)
        missing = [name for name in names if name not in rows]
        found += [f"{command} {name}: not in the table" for name in missing]
        if missing:
            continue
        cells = rows[names[0]]
        if action.choices:
            braces = re.search(r"\{([^}]*)\}", cells[0])  # `--schedule {asp,1f1b,gpipe}`
            listed = braces.group(1).split(",") if braces else []
            if listed != [str(choice) for choice in action.choices]:
                found.append(f"{command} {names[0]}: choices {listed}, parser {action.choices}")
        default = action.default if action.default is not None else other.get(action.dest)
        if default == argparse.SUPPRESS:  # --help
            continue
        if isinstance(default, bool) or not isinstance(default, (int, float, str)) or default == "":
            continue  # flags, lists, and "none" defaults are described in words
        text = shown(default)
        if not re.search(rf"(?<![\w.]){re.escape(text)}(?![\w.])", cells[1]):
            found.append(f"{command} {names[0]}: default {text} not in {cells[1]!r}")
    found += [f"{command} {name}: listed, but no such option" for name in rows if name not in known]
    return found


@pytest.fixture(scope="module")
def doc_sections() -> dict[str, str]:
    return sections(DOC.read_text())


def test_every_command_has_a_section(doc_sections):
    assert sorted(doc_sections) == sorted(PARSERS)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_options_match_the_parser(command, doc_sections):
    parser = PARSERS[command]()
    assert parser.prog == command
    assert problems(command, parser, doc_sections[command]) == []


def test_the_check_can_fail(doc_sections):
    """A planted option, a planted row, a changed default and a new choice are all caught."""
    parser = plan_parser()
    parser.add_argument("--no-such-option", help="planted")
    section = doc_sections["vpipe-plan"] + "\n| `--gone` | 1 | planted |\n"
    section = section.replace("| `--headroom F` | 0.1 |", "| `--headroom F` | 0.2 |")
    section = section.replace("`--solver {auto,dp,ilp}`", "`--solver {auto,dp}`")
    found = problems("vpipe-plan", parser, section)
    assert "vpipe-plan --no-such-option: not in the table" in found
    assert "vpipe-plan --gone: listed, but no such option" in found
    assert any(p.startswith("vpipe-plan --headroom: default 0.1") for p in found)
    assert any(p.startswith("vpipe-plan --solver: choices ['auto', 'dp'],") for p in found)
