"""Import PipeDream's `graph.txt` profiles as a vpipe `Profile`.

The format comes from PipeDream (msr-fiddle/pipedream, MIT licence): one line per node,
`nodeID -- DESC -- forward_compute_time=ms, backward_compute_time=ms, activation_size=bytes,
parameter_size=bytes` (activation_size may be a list `[a; b; c]`), then one tab-indented line
per edge, `\\tSRC -- DST`. Node lines are not in topological order; this module sorts them.
No torch here: the planner reads these profiles without it.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import networkx as nx

from vpipe.common.errors import VpipeError
from vpipe.common.optimizers import OPTIMIZERS
from vpipe.profiler.schema import NodeProfile, Profile

_NODE = re.compile(r"(\S+) -- (.+?) -- (forward_compute_time=.*)$")
_FIELDS = ("forward_compute_time", "backward_compute_time", "activation_size", "parameter_size")
_NOTE = (
    "saved-for-backward bytes are unknown (saved_bytes is None) because PipeDream's graph.txt "
    "does not record them, and Input node times are kept as in the file but cost nothing to the "
    "planner."
)
_FIX = "fix the line or re-export the profile with PipeDream's profiler"


def _number(text: str, where: str, key: str) -> float:
    """One non-negative finite number, or a `[a; b; c]` list summed."""
    text = text.strip()
    items = text[1:-1].split(";") if text.startswith("[") and text.endswith("]") else [text]
    try:
        values = [float(item) for item in items]
    except ValueError:
        raise VpipeError(f"{where}: {key}={text!r} is not a number; {_FIX}") from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise VpipeError(f"{where}: {key}={text!r} must be finite and >= 0; {_FIX}")
    return sum(values)


def _parse_node(line: str, where: str) -> tuple[str, str, dict[str, float]]:
    match = _NODE.match(line)
    if match is None:
        raise VpipeError(
            f"{where}: cannot parse node line (expected 'nodeID -- DESC -- "
            f"forward_compute_time=..., ...'); {_FIX}"
        )
    node_id, desc, rest = match.groups()
    metadata = dict(item.partition("=")[::2] for item in rest.split(" -- ")[0].split(", "))
    missing = [key for key in _FIELDS if key not in metadata]
    if missing:
        raise VpipeError(f"{where}: node line lacks {', '.join(missing)}; {_FIX}")
    return node_id, desc.strip(), {key: _number(metadata[key], where, key) for key in _FIELDS}


def _sort_key(name: str) -> tuple[int, str]:
    digits = re.search(r"\d+$", name)
    return (int(digits.group()) if digits else -1, name)


def _parse_graph(text: str, path: str | Path) -> nx.DiGraph[str]:
    """Nodes carry the file's description and numbers; edges carry their line number."""
    graph: nx.DiGraph[str] = nx.DiGraph()
    node_lines: dict[str, int] = {}
    edge_lines: dict[tuple[str, str], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{path}, line {number}"
        if not line.strip():
            continue
        if line.startswith("\t"):
            ends = line.strip().split(" -- ")
            if len(ends) != 2 or not all(ends) or any(" " in end for end in ends):
                raise VpipeError(
                    f"{where}: cannot parse edge line (expected '\\tSRC -- DST'); {_FIX}"
                )
            edge_lines.setdefault((ends[0], ends[1]), number)
            continue
        name, desc, values = _parse_node(line.strip(), where)
        if name in node_lines:
            raise VpipeError(
                f"{where}: node {name!r} is defined again (first on line {node_lines[name]}); "
                "keep one line per node id"
            )
        node_lines[name] = number
        graph.add_node(name, desc=desc, **values)
    if not node_lines:
        problem = "the file is empty" if not text.strip() else "it has no node lines"
        raise VpipeError(f"{path}: {problem}; pass a PipeDream graph.txt profile")
    for (src, dst), number in edge_lines.items():
        for end in (src, dst):
            if end not in node_lines:
                raise VpipeError(
                    f"{path}, line {number}: edge names unknown node {end!r}; "
                    "add its node line or remove the edge"
                )
        graph.add_edge(src, dst, line=number)
    return graph


def import_pipedream(
    path: str | Path, optimizer: str = "sgd", batch_size: int | None = None
) -> Profile:
    """Read a PipeDream `graph.txt` file and return it as a topologically ordered `Profile`."""
    if optimizer not in OPTIMIZERS:
        raise VpipeError(f"unknown optimizer {optimizer!r}; use one of {sorted(OPTIMIZERS)}")
    try:
        raw = Path(path).read_bytes()
        graph = _parse_graph(raw.decode("utf-8"), path)
    except OSError as err:
        raise VpipeError(
            f"cannot read PipeDream profile {path}: {err.strerror}; fix the path"
        ) from None
    except UnicodeDecodeError:
        raise VpipeError(f"{path} is not a text file; pass a PipeDream graph.txt profile") from None
    try:
        order = list(nx.lexicographical_topological_sort(graph, key=_sort_key))
    except nx.NetworkXUnfeasible:
        lines = [graph.edges[src, dst]["line"] for src, dst in nx.find_cycle(graph)]
        raise VpipeError(
            f"{path}, line {lines[0]}: the edges on lines {', '.join(map(str, lines))} form a "
            "cycle; remove one of them (a PipeDream graph must be acyclic)"
        ) from None

    position = {name: i for i, name in enumerate(order)}
    nodes = []
    for name in order:
        data = graph.nodes[name]
        params = round(data["parameter_size"])
        nodes.append(
            NodeProfile(
                name=name,
                op="placeholder" if data["desc"].startswith("Input") else "layer",
                target=data["desc"],
                inputs=tuple(sorted(graph.predecessors(name), key=position.__getitem__)),
                outputs=(),
                forward_ms=data["forward_compute_time"],
                backward_ms=data["backward_compute_time"],
                param_bytes=params,
                grad_bytes=params,
                buffer_bytes=0,
                output_bytes=round(data["activation_size"]),
                saved_bytes=None,
            )
        )
    return Profile(
        source=str(path),
        source_kind="pipedream",
        device="GPU (PipeDream profile)",
        dtype="float32",
        batch_size=batch_size,
        optimizer=optimizer,
        nodes=tuple(nodes),
        outputs=tuple(name for name in order if graph.out_degree(name) == 0),
        torch_version=None,
        source_sha256=hashlib.sha256(raw).hexdigest(),
        notes=(_NOTE,),
    )
