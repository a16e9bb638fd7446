"""Stage source text: torch.fx writes each op's line, a Jinja template writes everything else.

A stage's nodes fall into blocks: runs computed plainly, and runs the plan recomputes (each one
`torch.utils.checkpoint` segment, as the planner's memory model assumed). Each block becomes a
small fx graph whose inputs are the values it reads from before it and whose outputs are the
values read after it; fx's own code printer turns it into one line per op with the graph's node
names as variables, so the stage runs exactly the ops the traced model runs, in the same order.
fx gives its code only as text (`PythonCode.src`): it is read back through Python's syntax tree,
statement by statement, so nothing depends on how fx lays the text out.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import jinja2
from torch import fx

from vpipe.codegen.partition import StageFlow

TEMPLATES = Path(__file__).parent / "templates"
# the globals fx's printer refers to without defining them, and the module each comes from
_PRINTER_NAMES = {"torch": "torch", "device": "torch", "inf": "math", "nan": "math"}


@dataclass(frozen=True)
class Segment:
    """A recomputed run of nodes, emitted as a method that checkpoint calls."""

    method: str
    args: tuple[str, ...]
    returns: tuple[str, ...]
    body: tuple[str, ...]


@dataclass(frozen=True)
class StageText:
    """What the template needs for one stage; plain values only."""

    index: int
    stages: int
    owns: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    body: tuple[str, ...]  # forward's lines, checkpoint calls included
    segments: tuple[Segment, ...]
    stdlib_imports: tuple[str, ...]
    imports: tuple[str, ...]  # third-party (torch, vpipe), sorted as isort wants
    node_count: int


def stage_text(
    gm: fx.GraphModule, flow: StageFlow, stages: int, owns: tuple[str, ...]
) -> StageText:
    """Lay out one stage as forward lines and checkpoint segment methods."""
    by_name = {node.name: node for node in gm.graph.nodes}
    recomputed = {name: i for i, seg in enumerate(flow.segments) for name in seg}
    blocks: list[tuple[int | None, list[str]]] = []  # (segment index or None, node names)
    for name in flow.nodes:
        segment = recomputed.get(name)
        if not blocks or blocks[-1][0] != segment:
            blocks.append((segment, []))
        blocks[-1][1].append(name)
    # for each block, the values read after it: by later blocks, or sent on
    needed_after: list[set[str]] = []
    later: set[str] = set(flow.sent)
    for _, names in reversed(blocks):
        needed_after.append(set(later))
        later |= {u.name for n in names for u in by_name[n].all_input_nodes}
    needed_after.reverse()
    body: list[str] = []
    segments: list[Segment] = []
    used_globals: set[str] = set()
    for (segment, names), after in zip(blocks, needed_after, strict=True):
        args, lines, returns, names_used = _block(by_name, names, after, segment is not None)
        used_globals |= names_used
        if segment is None:
            body += lines
            continue
        method = f"_recompute_{segment}"
        segments.append(Segment(method, args, returns, tuple(lines)))
        call = f"checkpoint(self.{method}, {', '.join(args)}, use_reentrant=False)"
        body.append(f"{', '.join(returns)}{',' if len(returns) == 1 else ''} = {call}")
    return StageText(
        index=flow.index,
        stages=stages,
        owns=owns,
        inputs=flow.inputs,
        outputs=flow.sent,
        body=tuple(body),
        segments=tuple(segments),
        **_imports(used_globals, bool(segments)),
        node_count=len(flow.nodes),
    )


def _imports(printer_globals: set[str], checkpoints: bool) -> dict[str, tuple[str, ...]]:
    math_names = sorted(n for n in printer_globals if _PRINTER_NAMES[n] == "math")
    torch_names = sorted({"nn"} | {n for n in printer_globals if n == "device"})
    third_party = ["import torch"] if "torch" in printer_globals else []
    third_party.append(f"from torch import {', '.join(torch_names)}")
    if checkpoints:
        third_party.append("from torch.utils.checkpoint import checkpoint")
    third_party.append("from vpipe.common.stages import adopt")
    stdlib = (f"from math import {', '.join(math_names)}",) if math_names else ()
    return {"stdlib_imports": stdlib, "imports": tuple(third_party)}


def _block(
    by_name: dict[str, fx.Node], names: list[str], after: set[str], is_method: bool
) -> tuple[tuple[str, ...], list[str], tuple[str, ...], set[str]]:
    """(arguments, lines, returned names, printer globals used) of one block of nodes. An
    inlined block also "returns" the inputs read after it, so fx does not free them."""
    inside = set(names)
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for node in (by_name[n] for n in names):
        for source in node.all_input_nodes:
            if source.name not in inside and source.name not in env:
                env[source.name] = graph.placeholder(source.name)
        if node.op == "placeholder":  # by its node name: its target may be a builtin's
            env[node.name] = graph.placeholder(node.name)  # (nn.Sequential's is `input`)
        else:
            env[node.name] = graph.node_copy(node, lambda u: env[u.name])
        if env[node.name].name != node.name:  # fx renamed it: the lines would not link up
            raise RuntimeError(f"fx renamed {node.name!r} to {env[node.name].name!r}")
    returns = tuple(n for n in env if n in after and (n in inside or not is_method))
    graph.output(tuple(env[n] for n in returns))
    code = graph.python_code(root_module="self")
    args = tuple(n.name for n in graph.nodes if n.op == "placeholder")
    lines = _statements(code.src)
    read = {n.id for n in ast.walk(ast.parse("\n".join(lines))) if isinstance(n, ast.Name)}
    used = read & set(code.globals)
    unknown = used - set(_PRINTER_NAMES) - {"getattr"}
    if unknown:
        raise RuntimeError(f"generated code needs globals vpipe cannot import: {sorted(unknown)}")
    return args, lines, returns, used - {"getattr"}


def _statements(source: str) -> list[str]:
    """The statements of fx's forward but its return, each as fx printed it, read through
    Python's syntax tree rather than fx's layout. fx frees a value after its last use with
    `a = b = None`, written here as `del a, b`."""
    (forward,) = ast.parse(source).body
    if not isinstance(forward, ast.FunctionDef) or not isinstance(forward.body[-1], ast.Return):
        raise RuntimeError("unexpected fx code layout")
    statements = []
    for statement in forward.body[:-1]:
        freed = _freed(statement)
        text = ast.get_source_segment(source, statement)
        assert text is not None  # parsed from `source`: every statement has its place in it
        statements.append(f"del {', '.join(freed)}" if freed else text)
    return statements


def _freed(statement: ast.stmt) -> list[str]:
    """The names an `a = b = None` statement frees (fx assigns a node's value only once, and
    never the constant None): none for any other statement."""
    if not (
        isinstance(statement, ast.Assign)
        and isinstance(statement.value, ast.Constant)
        and statement.value.value is None
    ):
        return []
    return [target.id for target in statement.targets if isinstance(target, ast.Name)]


def render_stage(text: StageText, header: dict[str, str]) -> str:
    return template("stage.py.j2").render(stage=text, **header)


def template(name: str) -> jinja2.Template:
    """One of codegen/templates/: a name it does not know is an error, not an empty string, and
    the text comes out as written (block tags' own lines dropped, the final newline kept)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template(name)
