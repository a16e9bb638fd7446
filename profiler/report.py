"""Show a profile to a person: a summary table in the terminal and a bar chart as a PNG."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console, JustifyMethod
from rich.table import Table

from vpipe.common.plotting import pyplot, save_figure
from vpipe.common.units import human_bytes
from vpipe.profiler.schema import Profile

ROWS_SHOWN = 40  # past this, the table shows the costliest nodes; the file has them all


def summary_table(profile: Profile) -> Table:
    """Per-node table; for big graphs the costliest nodes, in graph order."""
    shown = list(profile.nodes)
    if len(shown) > ROWS_SHOWN:
        costliest = sorted(shown, key=lambda n: n.compute_ms, reverse=True)[:ROWS_SHOWN]
        keep = {n.name for n in costliest}
        shown = [n for n in profile.nodes if n.name in keep]
    title = f"{profile.source} on {profile.device}, batch {profile.batch_size}"
    if len(shown) < len(profile.nodes):
        title += f" ({len(shown)} costliest of {len(profile.nodes)} nodes)"
    table = Table(title=title)
    for column in ("node", "op", "output", "fwd ms", "bwd ms", "params", "saved", "activation"):
        justify: JustifyMethod = "left" if column in ("node", "op", "output") else "right"
        table.add_column(column, justify=justify, no_wrap=column == "node")
    for node in shown:
        shape = " ".join("x".join(map(str, m.shape)) or "scalar" for m in node.outputs) or "-"
        table.add_row(
            node.name,
            node.target,
            shape,
            f"{node.forward_ms:.3f}",
            f"{node.backward_ms:.3f}",
            human_bytes(node.param_bytes),
            human_bytes(node.saved_bytes),
            human_bytes(node.output_bytes),
        )
    return table


def clock_line(device: str, threads: int | None) -> str:
    """Which clock the times are on, as `measure.Clock` chose it from the device and threads."""
    if device != "cpu":
        return "times: CUDA events"
    if threads == 1:
        return (
            "times: the process's CPU time (one torch thread, and wall time counts others' turns)"
        )
    if threads:
        return f"times: wall time ({threads} torch threads: the process's CPU time sums them)"
    return "times: wall time"


def totals_lines(profile: Profile) -> list[str]:
    """Totals and the honesty figure: how far the node sum is from the whole-model time."""
    params = sum(n.param_bytes for n in profile.nodes)
    known = [n.saved_bytes for n in profile.nodes if n.saved_bytes is not None]
    saved = human_bytes(sum(known)) if len(known) == len(profile.nodes) else "unknown"
    lines = [
        f"{len(profile.nodes)} nodes, parameters {human_bytes(params)}, "
        f"saved for backward (excluding inputs kept) {saved}",
        f"sum of node forward+backward: {profile.node_compute_ms:.2f} ms",
        clock_line(profile.device, profile.threads),
    ]
    if profile.beside:
        lines.append(
            f"timed beside {profile.beside} busy neighbour(s) training the model (--beside)"
        )
    if profile.whole_model is not None:
        whole = profile.whole_model
        lines.append(
            f"whole model forward+backward: {whole.compute_ms:.2f} ms "
            f"(forward {whole.forward_ms:.2f}, backward {whole.backward_ms:.2f})"
        )
        lines.append(f"honesty (node sum / whole model): {profile.honesty:.3f}")
        if whole.peak_bytes is not None:
            lines.append(f"whole model peak memory: {human_bytes(whole.peak_bytes)}")
    if profile.link is not None:
        link = profile.link
        lines.append(
            f"transfers between stages ({link.backend}): {link.message_ms:.3f} ms a message + "
            f"{link.ms_per_mib:.3f} ms a MiB of each end's CPU"
        )
    lines.extend(f"note: {note}" for note in profile.notes)
    return lines


def print_summary(profile: Profile, console: Console) -> None:
    console.print(summary_table(profile))
    for line in totals_lines(profile):
        console.print(line, highlight=False)


def plot_profile(profile: Profile, path: str | Path) -> None:
    """Per-node time (forward and backward stacked) over per-node memory, one bar per node."""
    plt = pyplot()
    nodes = profile.nodes
    xs = range(len(nodes))
    mib = 1 / 2**20
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(nodes) * 0.12), 7), sharex=True)
    fwd = [n.forward_ms for n in nodes]
    top.bar(xs, fwd, label="forward", color="tab:blue")
    top.bar(xs, [n.backward_ms for n in nodes], bottom=fwd, label="backward", color="tab:orange")
    top.set_ylabel("time (ms)")
    top.set_title(f"{profile.source} on {profile.device}, batch {profile.batch_size}")
    top.legend()
    params = [n.param_bytes * mib for n in nodes]
    saved = [(n.saved_bytes or 0) * mib for n in nodes]
    bottom.bar(xs, params, label="parameters", color="tab:green")
    bottom.bar(
        xs, saved, bottom=params, label="saved for backward (beyond inputs)", color="tab:red"
    )
    bottom.plot(xs, [n.output_bytes * mib for n in nodes], "k.", label="output activation")
    bottom.set_ylabel("memory (MiB)")
    bottom.set_xlabel("node (topological order)")
    bottom.legend()
    if len(nodes) <= 60:
        bottom.set_xticks(list(xs), [n.name for n in nodes], rotation=90, fontsize=7)
    save_figure(fig, path)
