"""Matplotlib without a screen, and saving a figure with a one-line error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vpipe.common.errors import VpipeError


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, imported only when a plot is asked for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_plot_path(path: str | None) -> None:
    """Before any work: a --plot whose folder is missing would fail only after the command had
    written its YAML, leaving half its output."""
    if path and not Path(path).parent.is_dir():
        raise VpipeError(
            f"cannot write plot {path}: {Path(path).parent} is not a directory; "
            "choose another --plot"
        )


def save_figure(fig: Any, path: str | Path) -> None:
    """Write `fig` as an image and close it, whatever happens."""
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    except OSError as err:
        raise VpipeError(f"cannot write plot {path}: {err.strerror}") from None
    finally:
        pyplot().close(fig)
