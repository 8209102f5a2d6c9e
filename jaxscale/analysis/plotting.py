"""Shared matplotlib plumbing for the analyses: a headless backend, figure files, bands, log axes.

matplotlib is imported on first use, never at module import, so `jaxscale --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 130
FORMATS = ("png", "svg")
QUANTILES_90 = (0.05, 0.5, 0.95)


def pyplot() -> Any:
    """matplotlib.pyplot on a file backend (Agg unless svg/pdf is already selected)."""
    import matplotlib

    # Analyses run in CI, on servers and inside notebooks that display the written PNGs: a
    # file backend everywhere, never a window.
    if matplotlib.get_backend().lower() not in ("agg", "svg", "pdf"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, stem: str | Path) -> list[Path]:
    """Write fig as <stem>.png and <stem>.svg (tight bounding box), close it, return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FORMATS:
        p = stem.with_name(f"{stem.name}.{ext}")
        fig.savefig(p, dpi=DPI, bbox_inches="tight")
        paths.append(p)
    pyplot().close(fig)
    return paths


def log_axes(ax: Any, *, x: bool = True, y: bool = True) -> None:
    """Logarithmic x and/or y axis."""
    if x:
        ax.set_xscale("log")
    if y:
        ax.set_yscale("log")


def quantile_band(
    ax: Any,
    x: Any,
    draws_MxG: Any,
    *,
    color: Any = None,
    label: str | None = None,
    alpha: float = 0.15,
    qs: Sequence[float] = QUANTILES_90,
    lw: float = 1.2,
) -> None:
    """Median line and central band (qs[0]..qs[-1]) of per-draw curves (draws x grid)."""
    q = np.quantile(np.asarray(draws_MxG, np.float64), qs, axis=0)
    ax.plot(x, q[len(qs) // 2], color=color, lw=lw, label=label)
    ax.fill_between(x, q[0], q[-1], color=color, alpha=alpha, lw=0)
