"""Approach 2 of Hoffmann et al. 2022 (§3.2), done so that its numbers can be trusted.

Per compute budget, loss vs log10 N is fitted by a parabola through a window of the sizes
nearest the best run (far-off-optimum runs bend a global parabola and move its vertex); the
vertex is N_opt(C). A profile whose best run is its smallest or largest model is not
bracketed: its vertex is an extrapolation and is left out, with the side to extend named.
Vertex intervals come from a parametric bootstrap with the residual noise pooled over
profiles (or a given seed-to-seed SD), and the exponent a of N_opt ∝ C^a gets its interval
by refitting the line through one bootstrap vertex per profile. Fewer than three bracketed
vertices give no exponent (two points always lie on a line).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WINDOW = 5  # sizes nearest the best run (in log N) that each parabola is fitted through
LEVEL = 0.9  # the kit's interval convention
N_BOOT = 2000
MIN_VERTICES = 3


class ApproachTwoError(ValueError):
    """The data cannot support the requested Approach 2 number; the message says what would."""


@dataclass(frozen=True)
class Profile:
    """One budget's isoFLOP profile: its window parabola, vertex and bootstrap interval."""

    budget: float
    logN_K: np.ndarray
    loss_K: np.ndarray
    logD_K: np.ndarray
    window_K: np.ndarray  # bool mask of the sizes the parabola was fitted through
    coef_3: np.ndarray  # a, b, c of loss = a u² + b u + c, u = log10 N - x0
    x0: float
    rss: float
    dof: int
    bracketed: bool
    extend: str | None  # "smaller" or "larger" sizes, when not bracketed
    vertex_draws: np.ndarray  # bootstrap draws of log10 N_opt (NaN where a draw opened down)

    @property
    def best(self) -> int:
        return int(np.argmin(self.loss_K))

    @property
    def convex(self) -> bool:
        return bool(self.coef_3[0] > 0)

    @property
    def vertex(self) -> float:
        """log10 N_opt: the window parabola's minimum (NaN if it opens downward)."""
        a, b, _ = self.coef_3
        return self.x0 - b / (2 * a) if a > 0 else math.nan

    @property
    def loss_opt(self) -> float:
        return float(self(self.vertex)) if self.convex else math.nan

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        """Equal-tailed bootstrap interval of log10 N_opt (NaN without a noise estimate)."""
        return _quantiles(self.vertex_draws, level)

    def logD_at(self, logN: float) -> float:
        """log10 D along the profile (log D is linear in log N at fixed C = f(N)·D)."""
        slope, icpt = np.polyfit(self.logN_K, self.logD_K, 1)
        return float(icpt + slope * logN)

    def __call__(self, logN: np.ndarray | float) -> np.ndarray:
        u = np.asarray(logN, float) - self.x0
        a, b, c = self.coef_3
        return a * u**2 + b * u + c


def _quantiles(draws: np.ndarray, level: float) -> tuple[float, float]:
    if not len(draws) or np.all(np.isnan(draws)):
        return math.nan, math.nan
    q = (1 - level) / 2
    # A draw whose parabola opened downward has no vertex: it counts as unbounded on both sides,
    # so many such draws widen the interval to infinity instead of being quietly dropped.
    lo = np.quantile(np.where(np.isnan(draws), -np.inf, draws), q, method="inverted_cdf")
    hi = np.quantile(np.where(np.isnan(draws), np.inf, draws), 1 - q, method="inverted_cdf")
    return float(lo), float(hi)


def window_mask(logN_K: np.ndarray, loss_K: np.ndarray, k: int = WINDOW) -> np.ndarray:
    """The k sizes nearest the best run in log N (ties to the smaller gap), at least 3."""
    k = max(3, int(k))
    gap_K = np.abs(logN_K - logN_K[int(np.argmin(loss_K))])
    keep = np.zeros(len(logN_K), bool)
    keep[np.argsort(gap_K, kind="stable")[:k]] = True
    return keep


def _fit(u_W: np.ndarray, y_W: np.ndarray) -> tuple[np.ndarray, float]:
    X = np.stack([u_W**2, u_W, np.ones_like(u_W)], 1)
    coef, *_ = np.linalg.lstsq(X, y_W, rcond=None)
    r = y_W - X @ coef
    return coef, float(r @ r)


def _profile(budget, logN_K, loss_K, logD_K, k) -> Profile:
    order = np.argsort(logN_K)
    logN_K, loss_K, logD_K = logN_K[order], loss_K[order], logD_K[order]
    if len(np.unique(logN_K)) < 3:
        raise ApproachTwoError(f"C={budget:.3e}: {len(np.unique(logN_K))} sizes; a profile needs 3")
    w = window_mask(logN_K, loss_K, k)
    x0 = float(logN_K[w].mean())
    coef, rss = _fit(logN_K[w] - x0, loss_K[w])
    best = int(np.argmin(loss_K))
    extend = "smaller" if best == 0 else "larger" if best == len(loss_K) - 1 else None
    return Profile(
        budget=float(budget),
        logN_K=logN_K,
        loss_K=loss_K,
        logD_K=logD_K,
        window_K=w,
        coef_3=coef,
        x0=x0,
        rss=rss,
        dof=int(w.sum()) - 3,
        bracketed=extend is None,
        extend=extend,
        vertex_draws=np.empty(0),
    )


def _bootstrap(p: Profile, sd_B: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Vertices of whole profiles re-drawn with noise of SD sd_B[b]: the window is re-chosen
    around each draw's best run, so the choice of window is part of the uncertainty."""
    smooth_K = np.where(p.window_K, p(p.logN_K), p.loss_K)
    y_BxK = smooth_K + sd_B[:, None] * rng.standard_normal((len(sd_B), len(smooth_K)))
    best_B = np.argmin(y_BxK, axis=1)
    out_B = np.full(len(sd_B), np.nan)
    # The window depends only on which run is best, so draws are solved in one batch per best.
    for best in np.unique(best_B):
        rows = best_B == best
        w = window_mask(p.logN_K, np.where(np.arange(len(smooth_K)) == best, -np.inf, 0.0), k)
        u_W = p.logN_K[w] - p.logN_K[w].mean()
        X = np.stack([u_W**2, u_W, np.ones_like(u_W)], 1)
        coef_3xR = np.linalg.lstsq(X, y_BxK[rows][:, w].T, rcond=None)[0]
        a_R, b_R = coef_3xR[0], coef_3xR[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            out_B[rows] = np.where(a_R > 0, p.logN_K[w].mean() - b_R / (2 * a_R), np.nan)
    return out_B


def pooled_noise_sd(profiles: Sequence[Profile]) -> float:
    """Residual SD of the loss pooled over the profiles' window fits (NaN with no dof)."""
    dof = sum(p.dof for p in profiles)
    return math.sqrt(sum(p.rss for p in profiles) / dof) if dof > 0 else math.nan


def fit_profiles(
    budget_P: Sequence[float],
    logN_P: Sequence[float],
    loss_P: Sequence[float],
    logD_P: Sequence[float],
    *,
    window: int = WINDOW,
    noise_sd: float | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> list[Profile]:
    """One Profile per budget; bootstrap with noise_sd, or the SD pooled over profiles."""
    b, x, y, d = (np.asarray(v, float) for v in (budget_P, logN_P, loss_P, logD_P))
    profiles = [_profile(B, x[b == B], y[b == B], d[b == B], window) for B in sorted(np.unique(b))]
    rng = np.random.default_rng(seed)
    if noise_sd is not None:
        sd_B = np.full(n_boot, float(noise_sd))
    else:
        # A pooled SD from few residual dof is itself uncertain: each replicate draws its own
        # from the scaled-inverse-chi² it implies, so small studies get wider, honest intervals.
        dof = sum(p.dof for p in profiles)
        s = pooled_noise_sd(profiles)
        sd_B = s * np.sqrt(dof / rng.chisquare(dof, n_boot)) if dof > 0 else np.full(n_boot, s)
    out = []
    for p in profiles:
        draws = (
            _bootstrap(p, sd_B, window, rng) if np.isfinite(sd_B).all() else np.full(n_boot, np.nan)
        )
        out.append(dataclasses.replace(p, vertex_draws=draws))
    return out


@dataclass(frozen=True)
class Exponent:
    """y_opt ∝ C^e from the bracketed profile vertices, with a bootstrap interval."""

    value: float
    lo: float
    hi: float
    level: float
    n_vertices: int
    draws: np.ndarray

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}] ({self.level:.0%})"


def exponent(
    profiles: Sequence[Profile],
    *,
    of: str = "N",
    level: float = LEVEL,
    force: bool = False,
) -> Exponent:
    """a of N_opt ∝ C^a (of="N") or b of D_opt ∝ C^b (of="D"), Hoffmann et al. 2022 eq. 4."""
    if of not in ("N", "D"):
        raise ValueError(f"of must be 'N' or 'D', got {of!r}")
    use = [p for p in profiles if p.bracketed and p.convex]
    need = 2 if force else MIN_VERTICES
    if len(use) < need:
        unbracketed = [f"C={p.budget:.2e} (extend {p.extend})" for p in profiles if p.extend]
        raise ApproachTwoError(
            f"{len(use)} bracketed isoFLOP vertices; an exponent needs {MIN_VERTICES} "
            "(a line through two points has no error)"
            + (f"; unbracketed: {', '.join(unbracketed)}" if unbracketed else "")
            + "; add budgets or sizes around each budget's best run"
        )
    logC_V = np.log10([p.budget for p in use])

    def y(p: Profile, v: np.ndarray | float) -> np.ndarray:
        if of == "N":
            return np.asarray(v, float)
        slope, icpt = np.polyfit(p.logN_K, p.logD_K, 1)
        return icpt + slope * np.asarray(v, float)

    point = float(np.polyfit(logC_V, [y(p, p.vertex) for p in use], 1)[0])
    draws_VxB = np.stack([y(p, p.vertex_draws) for p in use])
    finite_B = np.all(np.isfinite(draws_VxB), axis=0)
    if not finite_B.any():
        return Exponent(point, math.nan, math.nan, level, len(use), np.empty(0))
    # Slope of each bootstrap replicate's vertices against log C, in closed form.
    xc_V = logC_V - logC_V.mean()
    slopes_B = (xc_V @ np.where(finite_B, draws_VxB, 0.0)) / (xc_V @ xc_V)
    slopes_B = np.where(finite_B, slopes_B, np.nan)
    lo, hi = _quantiles(slopes_B, level)
    if len(use) < MIN_VERTICES:
        warnings.warn(
            f"exponent from {len(use)} vertices (forced): its interval reflects vertex noise "
            "only, not whether a power law holds",
            stacklevel=2,
        )
    return Exponent(point, lo, hi, level, len(use), slopes_B)
