"""The DR drill's lag plot, drawn with matplotlib on its Agg canvas (no display, no pyplot state).

    from lagplot import lag_plot
    lag_plot("lag.png", {"g": [(0.0, 0.1), (0.5, 0.3), ...]}, markers=[(12.0, "2")], gap=2.0)

One line per group (lag_seconds over seconds since the drill began), broken where consecutive
samples are more than ``gap`` seconds apart (the primary was down), and a dashed vertical line,
labelled, at each phase start. Raises MissingMatplotlib when matplotlib is not installed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

INSTALL_HINT = "--plot needs matplotlib: pip install 'vstor[plot]'"


class MissingMatplotlib(RuntimeError):
    pass


def _with_gaps(points: Sequence[tuple[float, float]], gap: float) -> tuple[list[float], list[float]]:
    """x and y lists with a NaN between samples more than ``gap`` apart: matplotlib breaks the line there."""
    xs: list[float] = []
    ys: list[float] = []
    for x, y in points:
        if xs and x - xs[-1] > gap:
            xs.append(math.nan)
            ys.append(math.nan)
        xs.append(x)
        ys.append(y)
    return xs, ys


def lag_plot(path: str, series: Mapping[str, Sequence[tuple[float, float]]],
             markers: Sequence[tuple[float, str]] = (), gap: float = math.inf) -> None:
    """Plot each group's (t, lag_seconds) samples to a PNG at ``path``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingMatplotlib(INSTALL_HINT) from None
    fig = Figure(figsize=(9, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, points in series.items():
        ax.plot(*_with_gaps(points, gap), label=name)
    for x, label in markers:
        ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", color="grey")
    ax.set_xlabel("seconds since the drill began")
    ax.set_ylabel("replication lag (s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, color="0.9")
    if series:
        ax.legend(loc="best")
    fig.savefig(path, format="png")
