"""Approach 2 of Hoffmann et al. 2022 (§3.2), done so that its numbers can be trusted.

Per compute budget, loss vs log10 N is fitted by a parabola through a window of the sizes
nearest the best run (far-off-optimum runs bend a global parabola and move its vertex); the
vertex is N_opt(C). A profile whose best run is its smallest or largest model is not
bracketed: its vertex is an extrapolation and is left out, with the side to extend named.
Vertex intervals come from a parametric bootstrap with the residual noise pooled over
profiles (or a given seed-to-seed SD), and the exponent a of N_opt ∝ C^a gets its interval
by refitting the line through one bootstrap vertex per profile. Fewer than three bracketed
vertices give no exponent (two points always lie on a line).

Even noise-free, Approach 2 is biased when α ≠ β and the grid is wide or drifts relative to
the optimum: the isoFLOP curve is not a parabola in log N. `expected_bias` measures that bias
on the study's own grid by running Approach 2 on a fitted L(N, D) surface (Approach 3), and
`reconcile` sets the two approaches side by side.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from jaxscale.analysis.fit.varpro import VarProFit

WINDOW = 5  # sizes nearest the best run (in log N) that each parabola is fitted through
LEVEL = 0.9  # the kit's interval convention
N_BOOT = 2000
MIN_VERTICES = 3


class ApproachTwoError(ValueError):
    """The data cannot support the requested Approach 2 number; the message says what would."""


# --- one parabola for every vertex in the kit (isoFLOP profiles here, LR basins) -------------


@dataclass(frozen=True)
class Parabola:
    """y = a·u² + b·u + c with u = x - x0, the fit's covariance s²(XᵀX)⁻¹ and residual dof."""

    a: float
    b: float
    c: float
    x0: float
    cov: np.ndarray
    dof: int
    rss: float

    @property
    def vertex(self) -> float:
        """x at the minimum (NaN if the parabola opens downward)."""
        return self.x0 - self.b / (2 * self.a) if self.a > 0 else math.nan

    @property
    def vertex_se(self) -> float:
        """Delta-method SE of the vertex: g = ∂(-b/2a)/∂(a, b) = (b/2a², -1/2a)."""
        if not self.a > 0 or self.dof < 1:
            return math.nan
        g = np.array([self.b / (2 * self.a**2), -1 / (2 * self.a), 0.0])
        return float(math.sqrt(max(g @ self.cov @ g, 0.0)))

    def vertex_interval(self, level: float = LEVEL) -> tuple[float, float]:
        """Delta-method interval of the vertex with Student-t quantiles on the residual dof."""
        se = self.vertex_se
        if not math.isfinite(se):
            return math.nan, math.nan
        half = float(stats.t.ppf(0.5 + level / 2, self.dof)) * se
        return self.vertex - half, self.vertex + half

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        u = np.asarray(x, float) - self.x0
        return self.a * u**2 + self.b * u + self.c


def fit_parabola(x: np.ndarray, y: np.ndarray) -> Parabola:
    """Least-squares parabola in x (centred for conditioning); covariance s²(XᵀX)⁻¹."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or len(np.unique(x)) < 3:
        raise ValueError(f"a parabola needs 3 distinct sizes, got {len(np.unique(x))}")
    x0 = float(x.mean())
    X = np.stack([(x - x0) ** 2, x - x0, np.ones_like(x)], axis=1)
    coef_3, *_ = np.linalg.lstsq(X, y, rcond=None)
    dof = len(x) - 3
    resid = y - X @ coef_3
    rss = float(resid @ resid)
    s2 = rss / dof if dof > 0 else math.nan
    cov = s2 * np.linalg.inv(X.T @ X)
    return Parabola(float(coef_3[0]), float(coef_3[1]), float(coef_3[2]), x0, cov, dof, rss)


# --- isoFLOP profiles -------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """One budget's isoFLOP profile: its window parabola, vertex and bootstrap interval."""

    budget: float
    logN_K: np.ndarray
    loss_K: np.ndarray
    logD_K: np.ndarray
    window_K: np.ndarray  # bool mask of the sizes the parabola was fitted through
    fit: Parabola  # loss vs log10 N over the window
    extend: str | None  # "smaller" or "larger" sizes, when the optimum is not bracketed
    vertex_draws: np.ndarray  # bootstrap draws of log10 N_opt (NaN where a draw opened down)

    @property
    def best(self) -> int:
        return int(np.argmin(self.loss_K))

    @property
    def convex(self) -> bool:
        return bool(self.fit.a > 0)

    @property
    def bracketed(self) -> bool:
        """The best run has a larger and a smaller neighbour, and the window's vertex lies
        between the sizes trained: the optimum is interpolated, not extrapolated."""
        return self.extend is None and self.convex

    @property
    def dof(self) -> int:
        return self.fit.dof

    @property
    def rss(self) -> float:
        return self.fit.rss

    @property
    def vertex(self) -> float:
        """log10 N_opt: the window parabola's minimum (NaN if it opens downward)."""
        return self.fit.vertex

    @property
    def loss_opt(self) -> float:
        return float(self(self.vertex)) if self.convex else math.nan

    @property
    def note(self) -> str:
        """Why this profile gives no vertex, and what to train to get one ('' if bracketed)."""
        if self.extend == "smaller":
            return f"N_opt below {10 ** self.logN_K.min():.3g}: train smaller sizes"
        if self.extend == "larger":
            return f"N_opt above {10 ** self.logN_K.max():.3g}: train larger sizes"
        if not self.convex:
            return "loss not convex in log N over the window: more sizes or seeds"
        return ""

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        """Equal-tailed bootstrap interval of log10 N_opt (NaN without a noise estimate)."""
        return _quantiles(self.vertex_draws, level)

    def logD_at(self, logN: np.ndarray | float) -> np.ndarray:
        """log10 D along the profile (log D is linear in log N at fixed C = f(N)·D)."""
        slope, icpt = np.polyfit(self.logN_K, self.logD_K, 1)
        return icpt + slope * np.asarray(logN, float)

    def __call__(self, logN: np.ndarray | float) -> np.ndarray:
        return self.fit(logN)


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


def _profile(budget, logN_K, loss_K, logD_K, k) -> Profile:
    order = np.argsort(logN_K)
    logN_K, loss_K, logD_K = logN_K[order], loss_K[order], logD_K[order]
    if len(np.unique(logN_K)) < 3:
        raise ApproachTwoError(f"C={budget:.3e}: {len(np.unique(logN_K))} sizes; a profile needs 3")
    w = window_mask(logN_K, loss_K, k)
    fit = fit_parabola(logN_K[w], loss_K[w])
    best = int(np.argmin(loss_K))
    extend = "smaller" if best == 0 else "larger" if best == len(loss_K) - 1 else None
    # A best run inside the grid whose window vertex still falls outside it (noise, or a very
    # flat valley) is no better bracketed: the vertex is an extrapolation all the same.
    if extend is None and fit.a > 0 and not logN_K[0] <= fit.vertex <= logN_K[-1]:
        extend = "smaller" if fit.vertex < logN_K[0] else "larger"
    return Profile(
        budget=float(budget),
        logN_K=logN_K,
        loss_K=loss_K,
        logD_K=logD_K,
        window_K=w,
        fit=fit,
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


# --- the allocation exponent -----------------------------------------------------------------


@dataclass(frozen=True)
class Exponent:
    """y_opt ∝ C^e from the bracketed profile vertices, with a bootstrap interval."""

    of: str  # "N" (a) or "D" (b)
    value: float
    lo: float
    hi: float
    level: float
    n_vertices: int
    draws: np.ndarray

    @property
    def symbol(self) -> str:
        return "a" if self.of == "N" else "b"

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2 if self.has_interval else math.nan

    def __str__(self) -> str:
        if math.isnan(self.lo) or math.isnan(self.hi):
            return (
                f"{self.value:.3f} (no interval: the window fits leave no residual degrees of "
                "freedom to estimate the noise; train more sizes per budget or give the noise SD: --noise-sd, or noise_sd= in Python)"
            )
        if not self.has_interval:
            return (
                f"{self.value:.3f} (90% interval unbounded: in many bootstrap replicates some "
                "profile's parabola opens downward, the profiles being too flat for their noise; "
                "add sizes near each best run, or seeds)"
            )
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
    use = [p for p in profiles if p.bracketed]
    need = 2 if force else MIN_VERTICES
    if len(use) < need:
        left_out = [f"C={p.budget:.2e} ({p.note})" for p in profiles if not p.bracketed]
        raise ApproachTwoError(
            f"{len(use)} bracketed isoFLOP vert{'ex' if len(use) == 1 else 'ices'}; an exponent "
            f"needs {MIN_VERTICES} "
            "(a line through two points has no error)"
            + (f"; not bracketed: {', '.join(left_out)}" if left_out else "")
            + "; add budgets, or sizes around each budget's best run"
        )
    logC_V = np.log10([p.budget for p in use])

    def y(p: Profile, v: np.ndarray | float) -> np.ndarray:
        return np.asarray(v, float) if of == "N" else p.logD_at(v)

    point = float(np.polyfit(logC_V, [y(p, p.vertex) for p in use], 1)[0])
    draws_VxB = np.stack([y(p, p.vertex_draws) for p in use])
    finite_B = np.all(np.isfinite(draws_VxB), axis=0)
    if np.isnan(draws_VxB).all():  # no noise estimate, hence no bootstrap
        return Exponent(of, point, math.nan, math.nan, level, len(use), np.empty(0))
    # Slope of each bootstrap replicate's vertices against log C, in closed form.
    xc_V = logC_V - logC_V.mean()
    slopes_B = (xc_V @ np.where(finite_B, draws_VxB, 0.0)) / (xc_V @ xc_V)
    slopes_B = np.where(finite_B, slopes_B, np.nan)
    # Replicates with a vertex-less profile count as unbounded slopes (see _quantiles).
    lo, hi = _quantiles(slopes_B, level) if finite_B.any() else (-math.inf, math.inf)
    if len(use) < MIN_VERTICES:
        warnings.warn(
            f"exponent from {len(use)} vertices (forced): its interval reflects vertex noise "
            "only, not whether a power law holds",
            stacklevel=2,
        )
    return Exponent(of, point, lo, hi, level, len(use), slopes_B)


# --- the known Approach 2 bias on this grid ----------------------------------------------------


@dataclass(frozen=True)
class BiasCheck:
    """Approach 2 run on a fitted, noise-free L(N, D) surface over the study's own grid.

    surface_a = β/(α+β) of the surface (Hoffmann et al. 2022 eq. 4, C = 6ND);
    exact_a: slope of the surface's true minima along the study's own isoFLOP curves (differs
    from surface_a when C is not 6ND at these sizes, Porian et al. 2024, or a profile's runs
    do not share one C);
    simulated_a: what Approach 2 (same window, same profiles) reports on that surface.
    """

    surface_a: float
    exact_a: float
    simulated_a: float
    half_width: float  # of the observed exponent's interval
    n_vertices: int

    @property
    def bias(self) -> float:
        """Expected Approach 2 estimate minus the surface's β/(α+β) on this grid."""
        return self.simulated_a - self.surface_a

    @property
    def method_bias(self) -> float:
        """Part of the bias from parabolas on a non-parabolic valley (window, grid drift)."""
        return self.simulated_a - self.exact_a

    @property
    def convention_tilt(self) -> float:
        """Part of the bias from the profiles' C not being one 6ND per profile."""
        return self.exact_a - self.surface_a

    @property
    def significant(self) -> bool:
        """The expected bias exceeds the observed exponent's interval half-width (or there is
        no finite interval to cover it)."""
        if not math.isfinite(self.bias):
            return False
        return not abs(self.bias) <= self.half_width

    def describe(self) -> str:
        """One line: the expected bias, its parts, and whether it matters at this precision."""
        if not math.isfinite(self.bias):
            return (
                "Expected Approach 2 bias not computed: on the fitted surface fewer than two of "
                "these profiles have a vertex"
            )
        text = (
            f"Expected Approach 2 bias on this grid {self.bias:+.3f} (Approach 2 on the fitted "
            f"surface gives a = {self.simulated_a:.3f} against its β/(α+β) = "
            f"{self.surface_a:.3f}; window/grid {self.method_bias:+.3f}, C not 6ND or spread "
            f"within budgets {self.convention_tilt:+.3f})"
        )
        if self.significant and math.isfinite(self.half_width):
            text += (
                "; WARNING: larger than the exponent's interval half-width "
                f"{self.half_width:.3f}, so the interval does not cover the bias; centre "
                "profiles on their optima or narrow the window"
            )
        elif self.significant:
            text += "; WARNING: the exponent has no finite interval that could cover it"
        return text


def _true_vertex(p: Profile, surface: VarProFit) -> float:
    """log10 N minimising the surface along the profile's isoFLOP curve (NaN at the bounds)."""
    lo, hi = float(p.logN_K.min()) - 3, float(p.logN_K.max()) + 3

    def loss(x: np.ndarray | float) -> np.ndarray:
        return surface.predict(10**x, 10 ** p.logD_at(x))

    grid_G = np.linspace(lo, hi, 601)
    i = int(np.argmin(loss(grid_G)))
    if i in (0, len(grid_G) - 1):
        return math.nan
    res = optimize.minimize_scalar(
        loss, bounds=(grid_G[i - 1], grid_G[i + 1]), method="bounded", options={"xatol": 1e-10}
    )
    return float(res.x)


def expected_bias(
    profiles: Sequence[Profile],
    surface: VarProFit,
    observed: Exponent,
    *,
    window: int = WINDOW,
) -> BiasCheck:
    """Run Approach 2 on the surface at the (N, D) of the profiles that gave `observed`."""
    use = [p for p in profiles if p.bracketed]
    logC_V = np.log10([p.budget for p in use])
    simulated_V, exact_V = [], []
    for p in use:
        sim = _profile(
            p.budget, p.logN_K, surface.predict(10**p.logN_K, 10**p.logD_K), p.logD_K, window
        )
        simulated_V.append(sim.vertex)
        exact_V.append(_true_vertex(p, surface))

    def slope(y_V: list[float]) -> float:
        y = np.asarray(y_V)
        ok = np.isfinite(y)
        return float(np.polyfit(logC_V[ok], y[ok], 1)[0]) if ok.sum() >= 2 else math.nan

    surface_a, _ = surface.allocation_exponents()
    return BiasCheck(surface_a, slope(exact_V), slope(simulated_V), observed.half_width, len(use))


# --- Approach 2 beside Approach 3 --------------------------------------------------------------


@dataclass(frozen=True)
class Reconciliation:
    """Approach 2's a beside Approach 3's, whether they agree, and which to trust here."""

    a2: Exponent | None
    a2_refusal: str | None
    a3_q: tuple[float, float, float]  # 5%, 50%, 95% of the posterior of β/(α+β)
    a3_ok: bool
    varpro_a: float
    bias: BiasCheck | None
    agree: bool | None  # None when Approach 2 gave no interval to compare
    trust: str  # "both", "Approach 2", "Approach 3" or "neither"
    reasons: tuple[str, ...]

    def describe(self) -> str:
        """The verdict and its reasons, one sentence each."""
        return " ".join(self.reasons)


def _verdict(
    a2: Exponent, a3_q: tuple[float, float, float], a3_ok: bool, bias: BiasCheck | None
) -> tuple[bool, str, str]:
    """(agree, which to trust, why) for an Approach 2 exponent with an interval."""
    lo3, _, hi3 = a3_q
    agree = bool(a2.lo <= hi3 and lo3 <= a2.hi)
    biased = bias is not None and bias.significant
    if agree and not biased:
        if a3_ok:
            return agree, "both", "Both are usable; Approach 3 also covers budgets not trained."
        return agree, "Approach 2", "Read Approach 2: Approach 3's sampler did not converge."
    if agree:
        return (
            agree,
            "Approach 3" if a3_ok else "neither",
            (
                "They agree, but Approach 2's known bias on this grid exceeds its own interval: "
                "read Approach 3, or Approach 2 less the expected bias."
            ),
        )
    if not a3_ok:
        return (
            agree,
            "Approach 2",
            (
                "Trust Approach 2 here: Approach 3's sampler did not converge, and Approach 2's "
                "vertices are bracketed by trained sizes."
            ),
        )
    if bias is not None and a2.lo - bias.bias <= hi3 and lo3 <= a2.hi - bias.bias:
        return (
            agree,
            "Approach 3",
            (
                "The gap is Approach 2's expected bias on this grid (less the bias, its interval "
                "overlaps Approach 3's): trust Approach 3."
            ),
        )
    return (
        agree,
        "neither",
        (
            "The gap exceeds both intervals and the known bias: the Chinchilla form may not describe "
            "these runs (Approach 3 assumes it; Approach 2 does not, but holds only within the "
            "budgets trained). Add budgets and sizes around each optimum before quoting either."
        ),
    )


def reconcile(
    a2: Exponent | None,
    a3_q: tuple[float, float, float],
    *,
    a2_refusal: str | None = None,
    a3_ok: bool = True,
    a3_problems: Sequence[str] = (),
    varpro_a: float = math.nan,
    bias: BiasCheck | None = None,
) -> Reconciliation:
    """Compare Approach 2's interval with Approach 3's 90% interval a3_q = (q5, q50, q95)."""
    lo3, med3, hi3 = a3_q
    a3 = f"Approach 3 (Bayesian fit of L(N, D)) a = {med3:.3f} [{lo3:.3f}, {hi3:.3f}] (90%)"
    if not a3_ok:
        a3 += f", its sampler diagnostics FAILED ({'; '.join(a3_problems)})"
    reasons = []
    if a2 is None or not a2.has_interval:
        why = a2_refusal or (str(a2) if a2 is not None else "no exponent")
        reasons.append(f"Approach 2 gives no exponent with an interval here: {why}.")
        reasons.append(f"{a3} is the only estimate; it assumes the Chinchilla form holds.")
        agree, trust = None, "Approach 3" if a3_ok else "neither"
    else:
        agree, trust, why = _verdict(a2, a3_q, a3_ok, bias)
        reasons.append(
            f"Approach 2 (isoFLOP vertices) a = {a2} from {a2.n_vertices} bracketed vertices and "
            f"{a3} {'overlap: they agree' if agree else 'do not overlap: they disagree'}."
        )
        if bias is not None and math.isfinite(bias.bias):
            reasons.append(bias.describe() + ".")
        reasons.append(why)
    if math.isfinite(varpro_a):
        reasons.append(f"The least-squares (variable projection) fit gives a = {varpro_a:.3f}.")
    return Reconciliation(a2, a2_refusal, a3_q, a3_ok, varpro_a, bias, agree, trust, tuple(reasons))
