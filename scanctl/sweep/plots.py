"""PNG plots of a sweep's figures against its axes: ``DIR/plots/<figure>.png``, one panel per swept axis, one
line per combination of the other axes (up to :data:`MAX_SERIES`; beyond that, points only)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Figures plotted (when some point has them), in this order.
PLOTTED_PREFIXES = ("snr", "ghosting_ratio", "contrast_", "nrmse", "sar_", "pns_percent", "coil_peak_c",
                    "min_te_s", "min_tr_s", "wall_s")
MAX_SERIES = 8


def plot_figures(rows: list[dict[str, Any]], axes: tuple[str, ...], out_dir: Path) -> list[Path]:
    """Draw every plotted figure against every axis with two or more values; returns the files written.
    Needs matplotlib (``pip install scanctl[sweep]``); without it, nothing is drawn and a warning says so."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("plots not drawn: matplotlib is not installed (pip install 'scanctl[sweep]')")
        return []
    swept = [a for a in axes if len({_label(r.get(a)) for r in rows}) > 1]
    if not swept:
        return []
    figures = [c for c in sorted({c for r in rows for c in r}) if c.startswith(PLOTTED_PREFIXES)
               and any(_number(r.get(c)) is not None for r in rows)]
    out_dir.mkdir(exist_ok=True)
    written = []
    for figure in figures:
        fig, panels = plt.subplots(1, len(swept), figsize=(4.5 * len(swept), 3.6), squeeze=False)
        for ax, axis in zip(panels[0], swept, strict=True):
            _panel(ax, rows, axis, [a for a in swept if a != axis], figure)
        fig.tight_layout()
        path = out_dir / f"{figure}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _panel(ax: Any, rows: list[dict[str, Any]], axis: str, others: list[str], figure: str) -> None:
    numeric = all(_number(r.get(axis)) is not None for r in rows)
    categories = sorted({_label(r.get(axis)) for r in rows})
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        y = _number(r.get(figure))
        if y is None:
            continue
        x = _number(r.get(axis)) if numeric else float(categories.index(_label(r.get(axis))))
        name = ", ".join(f"{o.split('.')[-1]}={_label(r.get(o))}" for o in others)
        series.setdefault(name, []).append((float(x), y))  # type: ignore[arg-type]
    lines = len(series) <= MAX_SERIES
    for name, pts in series.items():
        pts.sort()
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, "o-" if lines else "o", ms=3, label=name if lines and name else None)
    if not numeric:
        ax.set_xticks(range(len(categories)), categories, rotation=30, fontsize=7)
    ax.set_xlabel(axis)
    ax.set_ylabel(figure)
    if lines and any(series) and len(series) > 1:
        ax.legend(fontsize=6)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _label(v: Any) -> str:
    return str(v)
