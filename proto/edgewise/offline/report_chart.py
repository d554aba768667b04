"""Charts of experiment reports, drawn with matplotlib (the `plot` extra: `pip install 'edgewise[plot]'`).

`plot_series` draws one line per series with its interval as a translucent band of the same colour,
a title, axis labels, a legend and a light grid, and returns PNG bytes (900x500 pixels by default).
With one or two x values (an experiment of an hour or two: a band that narrow would not show) each
point gets an error bar instead, the series side by side.
It uses matplotlib's object-oriented API with the Agg canvas (no pyplot, no display, no global
state), and writes no timestamp or version into the file, so the same input gives the same bytes with
the same matplotlib. Without matplotlib, `PlotUnavailable` says what to install. Used by
`edgewise ctl report --plot` (docs/reports.md).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Final, TypeAlias

__all__ = ["INSTALL_HINT", "PlotUnavailable", "Point", "plot_series"]

Point: TypeAlias = tuple[float, float | None, float | None, float | None]  # (x, value, low, high)

INSTALL_HINT: Final = "--plot needs matplotlib: pip install 'edgewise[plot]' (or: pip install matplotlib)"
DPI: Final = 100


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _nan(value: float | None) -> float:
    return float(value) if value is not None and math.isfinite(value) else math.nan


def plot_series(
    series: Mapping[str, Sequence[Point]],
    title: str,
    x_label: str,
    y_label: str,
    width: int = 900,
    height: int = 500,
    *,
    y_percent: bool = False,
) -> bytes:
    """A line plot as PNG bytes: per series (name -> points (x, value, low, high)), its value as a line
    with markers and [low, high] as a band, in matplotlib's default colour cycle in the mapping's order.

    None (or non-finite) values leave gaps. `y_percent`: the y axis in percent of 1."""
    if width < 200 or height < 150:
        raise ValueError(f"the plot needs at least 200x150 pixels, got {width}x{height}")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator, PercentFormatter
    except ImportError as exc:
        raise PlotUnavailable(INSTALL_HINT) from exc
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    points = {
        name: sorted((p for p in pts if math.isfinite(p[0])), key=lambda p: p[0])
        for name, pts in series.items()
    }
    all_x = sorted({float(p[0]) for pts in points.values() for p in pts})
    few = len(all_x) <= 2
    step = all_x[1] - all_x[0] if len(all_x) == 2 else 1.0
    for i, (name, ordered) in enumerate(points.items()):
        xs = [float(p[0]) for p in ordered]
        values = [_nan(p[1]) for p in ordered]
        lows, highs = [_nan(p[2]) for p in ordered], [_nan(p[3]) for p in ordered]
        if few:  # error bars, the series side by side around each x
            dodge = (i - (len(points) - 1) / 2) * 0.08 * step
            below = [v - lo if math.isfinite(v - lo) else 0.0 for v, lo in zip(values, lows, strict=True)]
            above = [hi - v if math.isfinite(hi - v) else 0.0 for v, hi in zip(values, highs, strict=True)]
            axes.errorbar(
                [x + dodge for x in xs], values, yerr=[below, above], fmt="o", capsize=5, label=name
            )
            continue
        (line,) = axes.plot(xs, values, marker="o", markersize=3, linewidth=1.8, label=name)
        axes.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.18, linewidth=0)
    if few and all_x:
        axes.set_xlim(all_x[0] - 0.5 * step, all_x[-1] + 0.5 * step)
        axes.set_xticks(all_x)
    elif all(x.is_integer() for x in all_x):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.grid(True, color="#dddddd", linewidth=0.8)
    axes.set_axisbelow(True)
    if y_percent:
        axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    if series:
        axes.legend(loc="best", frameon=True)
    out = io.BytesIO()
    figure.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()
