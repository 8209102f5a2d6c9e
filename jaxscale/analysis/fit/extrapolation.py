"""How far a question reaches beyond the data, and the model discrepancy that grows with it.

A fitted form is only approximately right. Inside the data its error hides in the residual scale
sigma; beyond the data it grows. Predictive bands therefore carry a discrepancy term on log loss,

    delta(x) ~ Normal(0, sigma^2 (a^2 + tau^2 d(x)^2)),

with d(x) the decades x lies beyond the fit data (the largest excess of log10 N, log10 D or
log10 C = 6ND over the data's range), a the out-of-sample offset and tau the growth per decade,
both in units of the fit's own residual scale sigma so that one default transfers between
studies with different noise levels (Kennedy & O'Hagan 2001 model discrepancy; the linear
growth is the simplest that vanishes at the data). a and tau are estimated by refitting on the
lower part of the data and predicting the upper part (rolling-origin backtests, Tashman 2000),
shrunk towards DEFAULT_DISCREPANCY, which leave-top-out refits of the published Chinchilla
points set (docs/fitting.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# Points within this many decades of each other are one level (one budget, one model size):
# isoFLOP runs miss their budget by < 0.3%, digitised published points by < 2%.
LEVEL_TOL_DECADES = 0.05
# An internal backtest slice holds at least this share of the points (and 3 of them).
SLICE_MIN_SHARE = 0.1


def with_compute(x: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Inputs plus C = 6ND when N and D are present and C is not (Kaplan 2020 sec. 2.1)."""
    out = {k: np.asarray(v, np.float64) for k, v in x.items()}
    if "C" not in out and {"N", "D"} <= set(out):
        out["C"] = 6.0 * out["N"] * out["D"]
    return out


def levels(x_P: np.ndarray, tol: float = LEVEL_TOL_DECADES) -> np.ndarray:
    """Level index per point (0 = smallest): sorted log10 values split where gaps exceed tol."""
    lx_P = np.log10(np.asarray(x_P, np.float64))
    order = np.argsort(lx_P, kind="stable")
    new = np.r_[False, np.diff(lx_P[order]) > tol]
    lev_P = np.empty(lx_P.size, int)
    lev_P[order] = np.cumsum(new)
    return lev_P


def top_slice(x_P: np.ndarray, min_share: float = SLICE_MIN_SHARE) -> np.ndarray:
    """Mask of the highest levels of x holding at least min_share of the points (and 3)."""
    lev_P = levels(x_P)
    need = max(3, math.ceil(min_share * lev_P.size))
    mask = np.zeros(lev_P.size, bool)
    for k in range(lev_P.max(), 0, -1):  # never the lowest level: something must remain
        mask |= lev_P == k
        if mask.sum() >= need:
            break
    return mask


def decades_beyond(data: Mapping[str, Any], query: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per input (and C = 6ND), how many decades each query point lies outside the data's range."""
    dx, qx = with_compute(data), with_compute(query)
    out = {}
    for k in dx:
        if k not in qx:
            continue
        lo, hi = np.log10(dx[k].min()), np.log10(dx[k].max())
        q = np.log10(np.asarray(qx[k], np.float64))
        out[k] = np.maximum(0.0, np.maximum(q - hi, lo - q))
    return out


def distance(data: Mapping[str, Any], query: Mapping[str, Any]) -> np.ndarray:
    """d(x): the largest per-input excess in decades (0 inside the data's range)."""
    per = decades_beyond(data, query)
    return np.max(np.stack(list(per.values())), axis=0)


@dataclass(frozen=True)
class Discrepancy:
    """Model discrepancy on log loss: sd = sigma * sqrt(a^2 + (tau d)^2), d in decades."""

    a: float
    tau: float
    source: str  # where a and tau came from, e.g. "default" or "2 internal backtests, 31 points"
    n_points: int = 0  # held-out points of the internal backtests behind the estimate

    def scale(self, d: np.ndarray) -> np.ndarray:
        """Discrepancy sd in units of sigma at distance d (decades)."""
        return np.sqrt(self.a**2 + (self.tau * np.asarray(d, np.float64)) ** 2)

    def describe(self) -> str:
        return (
            f"model discrepancy sd = sigma * sqrt({self.a:.2g}^2 + ({self.tau:.2g} d)^2), "
            f"d = decades beyond the data ({self.source})"
        )


# Prior medians of (a, tau), in units of sigma: leave-top-out refits of the 240 published
# Chinchilla points estimate a ~ 0-1.7 and tau ~ 3-7 per decade (docs/fitting.md).
DEFAULT_DISCREPANCY = Discrepancy(a=1.0, tau=5.0, source="default, no internal backtest")
# Log-scale sd of the prior around those defaults: a factor ~2.7 either way at 1 sd.
DISCREPANCY_PRIOR_SD = 1.0
