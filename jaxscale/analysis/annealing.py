"""Curve-level fits of the LR-annealing loss law (Tissue et al. 2024, arXiv 2408.11029).

Tissue et al. 2024 (eq. 1) describe every point of a loss curve, whatever the LR schedule, as

    L(s) = L0 + A · S1(s)^-α − C · S2(s)

    S1(s) = Σ_{i≤s} η_i                                   forward area
    S2(s) = Σ_{i≤s} m_i,  m_i = λ · m_{i−1} + (η_{i−1} − η_i)   annealing area (with momentum)

with η_i the absolute learning rate of update i and λ the decay factor of the annealing
momentum (λ = 0.999 is the paper's default; fit_runs averages over a grid of λ, since one
curve rarely fixes it and a schedule of another shape depends on it). The warmup is left
out as in the paper: curve points during warmup are not fitted, and the momentum starts at 0 at
the LR peak (so the warmup's rising LR does not count as negative annealing); S1 includes the
warmup's area.

Fits reuse the Bayesian fitter (analysis.fit): the law is a registered form fitted with NUTS,
its diagnostics (split R-hat, ESS, divergences), prior-sensitivity check and 90% central
intervals. One size: (L0, A, α, C). Several sizes, jointly: the Chinchilla-style separable
form (Hoffmann et al. 2022 eq. 2 with D replaced by the LR area S1; the additive N term of
the annealing law follows Wang et al. 2025, arXiv 2512.13705)

    L(s, N) = E + B · N^-β + A · S1(s)^-α − C · S2(s)

so L0(N) = E + B N^-β while A, α and C are shared across sizes.

The points of one curve are not independent draws: consecutive steps share the trajectory.
The curve is therefore thinned (points spread over log steps, for the power law in S1, over
steps, and over the annealing area S2, where C is learned) and fitted with Student-t noise on
log loss, its likelihood raised to the power n_eff / n: the share of independent points the
thinned ones are worth, from the autocorrelation of the residuals along the whole curve.
Predictions carry the fitter's model-discrepancy term, which grows with the decades S1, S2 and
N lie beyond the fitted points, and are averaged over λ with its posterior weights.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.stats as st

from jaxscale.analysis import fit as F
from jaxscale.analysis import plotting
from jaxscale.analysis.fit.results import PREDICTIVE_DRAWS, mean_log_loss, noise_scale
from jaxscale.config import TrainConfig
from jaxscale.core.train import relative_schedule

LAMBDA = 0.999  # Tissue et al. 2024: decay factor of the annealing momentum (default 0.999)
# λ averaged over when the fit runs do not fix it: annealing delays 1/(1 − λ) of 10, 20, 50, 100,
# 200, 500 and 1000 steps, a 1-2-5 grid, so a uniform prior on it is about log-uniform in delay.
LAMBDA_GRID = (0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)
# Grid values whose posterior weight falls below this are left out (their weight is reported).
LAMBDA_MIN_WEIGHT = 0.01
REFERENCE = (
    "Tissue et al. 2024, 'Scaling Law with Learning Rate Annealing', arXiv 2408.11029, eq. 1"
)
TARGETS = ("loss", "eval_loss")
# Metrics convention (core.train.record): the row of step k holds the LR of update k, the train
# loss measured *before* update k (k − 1 updates done) and the eval loss *after* it (k done).
UPDATES_BEHIND = {"loss": 1, "eval_loss": 0}
POINTS = 36  # curve points kept per run after thinning
DECADES_TOL = 1e-4  # beyond the fitted range by less than 0.023%: inside it
_TINY = 1e-6  # floor of the predicted loss inside the log (the law can cross 0 far from the data)


def _areas_law(lx: Mapping[str, Any], p: Mapping[str, Any]) -> Any:
    """A · S1^-α − C · S2 of Tissue et al. 2024 eq. 1 (S2 enters as log(1 + S2), S2 ≥ 0)."""
    return jnp.exp(p["log_A"] - p["alpha"] * lx["S1"]) - jnp.exp(p["log_C"]) * jnp.expm1(lx["S2p1"])


def _one_size(lx: Mapping[str, Any], p: Mapping[str, Any]) -> Any:
    # Tissue et al. 2024 eq. 1: L = L0 + A S1^-α − C S2
    return jnp.log(jnp.maximum(jnp.exp(p["log_L0"]) + _areas_law(lx, p), _TINY))


def _sizes(lx: Mapping[str, Any], p: Mapping[str, Any]) -> Any:
    # L0(N) = E + B N^-β (Hoffmann et al. 2022 eq. 2) in Tissue et al. 2024 eq. 1
    L0 = jnp.exp(p["log_E"]) + jnp.exp(p["log_B"] - p["beta"] * lx["N"])
    return jnp.log(jnp.maximum(L0 + _areas_law(lx, p), _TINY))


_AREA_PRIORS = {
    # S1 in absolute-LR units (peak LR × steps: ~0.1-100); the shear centres log_A on the data
    "log_A": F.Prior("normal", 0.0, 5.0),
    "alpha": F.Prior("lognormal", math.log(0.5), 1.0),
    # C · S2 is the annealing drop, tenths of a nat for S2 ~ 0.01-10
    "log_C": F.Prior("normal", 0.0, 4.0),
}

FORM = F.Form(
    name="anneal",
    inputs=("S1", "S2p1"),
    priors={"log_L0": F.Prior("normal", 1.0, 1.0), **_AREA_PRIORS},
    log_loss=_one_size,
    reference=REFERENCE,
    description="L = L0 + A*S1^-alpha - C*S2 (S2p1 = 1 + S2)",
    shear={"log_A": ("alpha", "S1")},
)

FORM_SIZES = F.Form(
    name="anneal_N",
    inputs=("S1", "S2p1", "N"),
    priors={
        "log_E": F.Prior("normal", 0.5, 1.0),
        "log_B": F.Prior("normal", 5.0, 5.0),
        "beta": F.Prior("lognormal", math.log(0.3), 1.0),
        **_AREA_PRIORS,
    },
    log_loss=_sizes,
    reference=f"{REFERENCE}; L0(N) = E + B N^-beta after Hoffmann et al. 2022 eq. 2 "
    "(additive N term: Wang et al. 2025, arXiv 2512.13705)",
    description="L = E + B*N^-beta + A*S1^-alpha - C*S2 (S2p1 = 1 + S2)",
    shear={"log_A": ("alpha", "S1"), "log_B": ("beta", "N")},
)


for _f in (FORM, FORM_SIZES):
    if _f.name not in F.list_forms():
        F.register_form(_f)


def loss_law(S1: Any, S2: Any, L0: float, A: float, alpha: float, C: float) -> np.ndarray:
    """L = L0 + A · S1^-α − C · S2 (Tissue et al. 2024 eq. 1), in numpy."""
    return L0 + A * np.asarray(S1, np.float64) ** -alpha - C * np.asarray(S2, np.float64)


# --------------------------------------------------------------------------------------------
# Areas under a schedule
# --------------------------------------------------------------------------------------------


def peak_index(lr_K: np.ndarray) -> int:
    """Updates done when the LR first reaches its peak: the end of warmup (0 without one)."""
    lr = np.asarray(lr_K, np.float64)
    return int(np.argmax(lr >= lr.max() * (1 - 1e-6)))


def areas(lr_K: Any, *, lam: float = LAMBDA) -> tuple[np.ndarray, np.ndarray]:
    """(S1, S2) after s = 0..K updates from the LR of updates 1..K (Tissue et al. 2024 eq. 1).

    S1(s) = Σ_{i≤s} η_i; S2(s) = Σ_{i≤s} m_i with m_i = λ m_{i−1} + (η_{i−1} − η_i) from the
    LR peak on (m = 0 during warmup). Arrays have K + 1 entries, index s.
    """
    lr = np.asarray(lr_K, np.float64).reshape(-1)
    if not lr.size or not np.isfinite(lr).all() or (lr < 0).any():
        raise ValueError("areas: the LR array must be non-empty, finite and >= 0")
    if not 0 <= lam < 1:
        raise ValueError(f"areas: lambda must be in [0, 1), got {lam}")
    S1 = np.r_[0.0, np.cumsum(lr)]
    m = np.zeros(lr.size + 1)
    k0 = peak_index(lr) + 1  # update index (1-based) of the peak LR
    for i in range(k0 + 1, lr.size + 1):
        m[i] = lam * m[i - 1] + (lr[i - 2] - lr[i - 1])
    return S1, np.cumsum(m)


def schedule_lr(tc: TrainConfig) -> np.ndarray:
    """LR of updates 1..tc.steps under tc's schedule: peak LR × core.train.relative_schedule."""
    sched = relative_schedule(tc)
    return float(tc.lr) * np.asarray(sched(jnp.arange(tc.steps)), np.float64)


def thin(s_P: np.ndarray, points: int, S2_P: np.ndarray | None = None) -> np.ndarray:
    """Indices of about `points` of the sorted steps s_P, spread over log s (the power law in
    S1), over s, and over the annealing area S2_P when given (the annealing, where C is
    learned; a cooldown is a small share of the steps); the last is always kept."""
    s = np.asarray(s_P, np.float64)
    if s.size <= points:
        return np.arange(s.size)
    parts = 3 if S2_P is not None and np.ptp(S2_P) > 0 else 2
    k = max(2, points // parts)
    idx = [
        np.searchsorted(s, np.geomspace(s[0], s[-1], k)),
        np.searchsorted(s, np.linspace(s[0], s[-1], points - (parts - 1) * k)),
    ]
    if parts == 3:
        S2 = np.asarray(S2_P, np.float64)
        levels = np.linspace(S2.min(), S2.max(), k)
        idx.append(np.argmin(np.abs(S2[None, :] - levels[:, None]), axis=1))
    return np.unique(np.clip(np.r_[np.concatenate(idx), s.size - 1], 0, s.size - 1))


# --------------------------------------------------------------------------------------------
# Curve points of runs
# --------------------------------------------------------------------------------------------


def run_lr(curve: pd.DataFrame, run_id: str) -> np.ndarray:
    """The recorded LR of updates 1..K of one run (every step must be logged)."""
    c = curve.sort_values("step")
    steps = c["step"].to_numpy(int)
    if not len(c) or not np.array_equal(steps, np.arange(1, steps[-1] + 1)):
        raise ValueError(
            f"run {run_id}: metrics.jsonl does not log every step 1..{steps.max() if len(c) else 0}"
            "; the LR areas need the LR of every update"
        )
    lr = c["lr"].to_numpy(np.float64)
    if not np.isfinite(lr).all():
        raise ValueError(f"run {run_id}: metrics.jsonl has steps without an 'lr' value")
    return lr


def curve_points(
    runs_df: pd.DataFrame,
    curves_df: pd.DataFrame,
    run_ids: Sequence[str],
    *,
    target: str = "loss",
    points: int | None = POINTS,
    lam: float = LAMBDA,
    thin_lam: float | None = None,
) -> pd.DataFrame:
    """Post-warmup curve points of runs, thinned to `points` per run (None keeps all) using
    the S2 of thin_lam (default lam; fixed when likelihoods of several λ are compared).

    Columns: run_id, name, schedule, N (non-embedding parameters), step, s (updates behind the
    measurement), S1, S2, S2p1 = 1 + S2, loss (the target column), last_step.
    """
    if target not in TARGETS:
        raise ValueError(f"target: {target!r} not in {TARGETS}")
    frames = []
    for rid in run_ids:
        meta = runs_df[runs_df["run_id"] == rid]
        if not len(meta):
            raise ValueError(f"run {rid!r} is not in the results")
        meta = meta.iloc[0]
        if meta.get("status", "done") != "done":
            raise ValueError(f"run {rid}: status {meta['status']!r}, not done; finish it first")
        curve = curves_df[curves_df["run_id"] == rid]
        lr = run_lr(curve, rid)
        S1, S2 = areas(lr, lam=lam)
        c = curve.sort_values("step")
        s = c["step"].to_numpy(int) - UPDATES_BEHIND[target]
        y = c[target].to_numpy(np.float64)
        keep = (s > peak_index(lr)) & np.isfinite(y) & (y > 0)
        s, y = s[keep], y[keep]
        if not s.size:
            raise ValueError(f"run {rid}: no post-warmup {target} values to fit")
        S2_thin = S2 if thin_lam is None or thin_lam == lam else areas(lr, lam=thin_lam)[1]
        idx = np.arange(s.size) if points is None else thin(s, points, S2_thin[s])
        s, y = s[idx], y[idx]
        frames.append(
            pd.DataFrame(
                {
                    "run_id": rid,
                    "name": meta.get("name", rid),
                    "schedule": meta.get("train.schedule", ""),
                    "N": float(meta["n_params_nonembedding"]),
                    "step": s + UPDATES_BEHIND[target],
                    "s": s,
                    "S1": S1[s],
                    "S2": S2[s],
                    "S2p1": 1.0 + S2[s],
                    "loss": y,
                    "last_step": int(lr.size),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def resolve_runs(runs_df: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """Run IDs for run IDs, run names or unique run-ID prefixes."""
    out = []
    for k in keys:
        hit = runs_df[(runs_df["run_id"] == k) | (runs_df.get("name", "") == k)]
        if not len(hit):
            hit = runs_df[runs_df["run_id"].astype(str).str.startswith(k)]
        if len(hit) != 1:
            have = ", ".join(f"{r.run_id} ({r.name})" for r in runs_df.itertuples())
            raise ValueError(f"run {k!r} matches {len(hit)} runs; have: {have}")
        out.append(str(hit["run_id"].iloc[0]))
    return out


# --------------------------------------------------------------------------------------------
# Fit
# --------------------------------------------------------------------------------------------


def _acf(r: np.ndarray) -> np.ndarray:
    """Autocorrelation of r at lags 1, 2, ... up to the first lag where it is <= 0 (Geyer's 1992
    initial positive sequence: beyond it the estimates are noise)."""
    r = r - r.mean()
    den = float(np.sum(r * r))
    out: list[float] = []
    for k in range(1, r.size // 2):
        v = float(np.sum(r[k:] * r[:-k]) / den) if den > 0 else 0.0
        if v <= 0:
            break
        out.append(v)
    return np.asarray(out)


def _residual_acf(res: F.FitResult, full: pd.DataFrame) -> dict[str, tuple[np.ndarray, float]]:
    """Per run: the ACF (_acf) of the log-loss residuals from the posterior-median law along
    its logged curve `full`, and the logging cadence in steps."""
    full = full.reset_index(drop=True)
    x = {k: full[k].to_numpy(np.float64) for k in F.get_form(res.form).inputs}
    mu = np.median(mean_log_loss(res.form, res.samples, x).reshape(-1, len(full)), axis=0)
    r_P = np.log(full["loss"].to_numpy(np.float64)) - mu
    out = {}
    for rid, g in full.groupby("run_id", sort=False):
        order = np.argsort(g["s"].to_numpy())
        s_run = g["s"].to_numpy(np.float64)[order]
        cadence = float(np.median(np.diff(s_run))) if s_run.size > 1 else 1.0
        out[str(rid)] = (_acf(r_P[g.index.to_numpy()][order]), cadence)
    return out


def _n_eff(points: pd.DataFrame, acf: Mapping[str, tuple[np.ndarray, float]]) -> float:
    """Independent points the fit points are worth: n² / Σ_ij ρ_ij (the variance of a mean of
    correlated points; e.g. Bayley & Hammersley 1946), ρ_ij read off each curve's ACF at the
    steps between points i and j (0 between curves and beyond the ACF's positive lags)."""
    total = 0.0
    for rid, g in points.groupby("run_id", sort=False):
        a, cadence = acf[str(rid)]
        s = g["s"].to_numpy(np.float64)
        lag = np.rint(np.abs(s[:, None] - s[None, :]) / cadence).astype(int)
        total += float(np.r_[1.0, a, 0.0][np.minimum(lag, a.size + 1)].sum())
    return min(float(len(points)), len(points) ** 2 / total)


@dataclass(frozen=True)
class LambdaFit:
    """The law's posterior under one λ and that λ's posterior weight (Hoeting et al. 1999)."""

    lam: float
    weight: float
    result: F.FitResult
    points: pd.DataFrame  # the fit points, S1 and S2 under this λ


def _param_line(res: F.FitResult) -> str:
    t = res.table()
    return ", ".join(
        f"{k} {t.loc[k, 'median']:.3g} [{t.loc[k, 'q5']:.3g}, {t.loc[k, 'q95']:.3g}]"
        for k in t.index
        if not k.startswith("log_") and not k.endswith("_c")
    )


@dataclass(frozen=True)
class AnnealFit:
    """The law fitted to curve points: the fitter's FitResult plus the points and conventions.

    result/points/lam are the most probable λ's; members holds every λ predictions average
    over, with its posterior weight (empty when λ was given: lam alone).
    """

    result: F.FitResult
    points: pd.DataFrame
    target: str
    lam: float
    autocorr: dict[str, float]  # lag-1 residual autocorrelation along each run (logging cadence)
    caveats: list[str] = field(default_factory=list)
    # λ -> maximised log likelihood of the fit points, when λ was averaged over
    lambda_profile: dict[float, float] = field(default_factory=dict)
    members: tuple[LambdaFit, ...] = ()
    n_eff: float = float("nan")  # independent points the fit counts (autocorrelation-adjusted)

    @property
    def mixture(self) -> tuple[LambdaFit, ...]:
        """Every λ the predictions average over with its weight (lam alone, weight 1, if given)."""
        return self.members or (LambdaFit(self.lam, 1.0, self.result, self.points),)

    @property
    def joint(self) -> bool:
        return self.result.form == FORM_SIZES.name

    @property
    def ok(self) -> bool:
        return all(m.result.ok for m in self.mixture)

    @property
    def problems(self) -> list[str]:
        """Failed diagnostics of every λ's fit."""
        many = len(self.mixture) > 1
        return [
            f"lambda {m.lam:g}: {p}" if many else p for m in self.mixture for p in m.result.problems
        ]

    def lambda_note(self) -> str:
        """How λ entered: given, or averaged over with its posterior weights."""
        if not self.lambda_profile:
            return f"lambda = {self.lam:g} (given)"
        w = ", ".join(f"{m.lam:g}: {m.weight:.2f}" for m in self.mixture)
        out = sorted(set(self.lambda_profile) - {m.lam for m in self.mixture})
        left = f"; left out (weight < {LAMBDA_MIN_WEIGHT:g}): {out}" if out else ""
        return (
            f"lambda averaged over, posterior weights {w}{left} (uniform prior on "
            f"{list(LAMBDA_GRID)}; log likelihood at the mode times n_eff / n: equal parameter "
            "counts, BIC weights)"
        )

    def describe(self) -> str:
        """Parameters with 90% intervals, diagnostics, the data behind them and the caveats."""
        runs = ", ".join(
            f"{g.run_id[:8]} ({g.name}, {g.schedule}, N={g.N:.3g}, {g.n} points)"
            for g in self.points.groupby("run_id", sort=False)
            .agg(
                name=("name", "first"),
                schedule=("schedule", "first"),
                N=("N", "first"),
                n=("s", "size"),
            )
            .reset_index()
            .itertuples()
        )
        ac = ", ".join(f"{k[:8]} {v:.2f}" for k, v in self.autocorr.items())
        lines = [
            f"LR-annealing law ({REFERENCE}) fitted to the {self.target!r} column of: {runs}",
            self.lambda_note(),
        ]
        if self.lambda_profile:
            prof = ", ".join(f"{k:g}: {v:.1f}" for k, v in self.lambda_profile.items())
            lines.append(f"maximised log likelihood per lambda: {prof}")
        lines += [f"most probable lambda = {self.lam:g}:", self.result.describe()]
        lines += [
            f"lambda = {m.lam:g} (weight {m.weight:.2f}): {_param_line(m.result)}"
            + ("" if m.result.ok else " DIAGNOSTICS FAILED")
            for m in self.mixture
            if m.lam != self.lam
        ]
        lines += [
            f"residual lag-1 autocorrelation along each curve (logging cadence): {ac}; "
            f"the {len(self.points)} fit points count as n_eff = {self.n_eff:.1f}",
            *(f"caveat: {c}" for c in self.caveats),
        ]
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """JSON-ready parameters (median, q5, q95) per λ, weights, diagnostics and caveats."""

        def params(res: F.FitResult) -> dict[str, dict[str, float]]:
            return {
                k: {"median": float(r["median"]), "q5": float(r["q5"]), "q95": float(r["q95"])}
                for k, r in res.table().iterrows()
            }

        return {
            "law": REFERENCE,
            "form": self.result.form,
            "lambda": self.lam,
            "lambda_note": self.lambda_note(),
            "lambda_weights": {str(m.lam): m.weight for m in self.mixture},
            "target": self.target,
            "intervals": F.INTERVAL,
            "ok": self.ok,
            "problems": self.problems,
            "caveats": [*self.result.caveats, *self.caveats],
            "residual_lag1_autocorr": self.autocorr,
            "n_points": len(self.points),
            "n_eff": self.n_eff,
            "lambda_profile_loglik": {str(k): v for k, v in self.lambda_profile.items()},
            "runs": sorted(set(self.points["run_id"])),
            "params": params(self.result),
            "params_by_lambda": {str(m.lam): params(m.result) for m in self.mixture},
        }


def _fit(points: pd.DataFrame, **kw: Any) -> F.FitResult:
    fm = FORM_SIZES if points["N"].nunique() > 1 else FORM
    data = {k: points[k].to_numpy(np.float64) for k in (*fm.inputs, "loss")}
    with warnings.catch_warnings():
        # runs sharing a schedule prefix (constant and wsd) repeat (S1, S2) points; merged
        # points are one point of evidence, as the fitter's caveat says
        warnings.simplefilter("ignore", F.ReplicatesMergedWarning)
        return F.fit(data, fm, **kw)


def _map(points: pd.DataFrame, seed: int) -> F.FitResult:
    return _fit(points, method="map", seed=seed, quiet=True)


def fit_curves(
    points: pd.DataFrame,
    *,
    target: str = "loss",
    lam: float = LAMBDA,
    method: str = "nuts",
    chains: int = 4,
    warmup: int = 1000,
    draws: int = 1000,
    seed: int = 0,
    quiet: bool = False,
    full: pd.DataFrame | None = None,
    weight: float | None = None,
) -> AnnealFit:
    """Fit the law to curve points (curve_points): one size, or jointly over sizes.

    The points of one curve share its wiggles, so they are worth n_eff <= n independent ones:
    n_eff = n² / Σ_ij ρ_ij (the variance of a mean of correlated points), ρ read off the ACF of
    the residuals along `full` (every logged post-warmup point of the same runs: curve_points
    with points=None; default `points`) at a MAP fit. The likelihood is then raised to the
    power weight = n_eff / n (default; a magnitude-adjusted likelihood, Ribatet et al. 2012),
    which keeps the posterior's shape and widens it to the evidence of n_eff points.
    """
    points = points.reset_index(drop=True)
    full = points if full is None else full.reset_index(drop=True)
    if not (points["S2"] > 0).any():
        raise ValueError(
            "the fit runs never anneal the LR (S2 = 0 at every point), so the annealing term "
            "C cannot be fitted; include a run with a decay (wsd or cosine)"
        )
    joint = points["N"].nunique() > 1
    if weight is None:
        weight = _n_eff(points, _residual_acf(_map(points, seed), full)) / len(points)
    kw = dict(method=method, chains=chains, warmup=warmup, draws=draws, seed=seed, quiet=quiet)
    res = _fit(points, weight=weight, **kw)
    acf = _residual_acf(res, full)
    ac = {k: float(a[0]) if a.size else 0.0 for k, (a, _) in acf.items()}
    n_eff = weight * len(points)
    caveats = []
    if weight < 0.9:
        caveats.append(
            f"residuals are autocorrelated along the curves (lag-1 at the logging cadence: "
            f"{', '.join(f'{v:.2f}' for v in ac.values())}): the {len(points)} points count as "
            f"n_eff = {n_eff:.1f} independent ones (likelihood weight {weight:.2f})"
        )
    n_sizes = points["N"].nunique()
    if joint and n_sizes < 4:
        caveats.append(
            f"{n_sizes} sizes measure {n_sizes} values of L0(N) = E + B N^-beta, three "
            "parameters: E, B and beta are not identified (their chains may disagree); the shared "
            "A, alpha, C and predictions at the fitted sizes are what such a fit can support"
        )
    if not joint and points["run_id"].nunique() == 1:
        caveats.append("one curve: the law's transfer to other schedules is assumed, not tested")
    return AnnealFit(res, points, target, lam, ac, caveats, n_eff=n_eff)


def _loglik_at_mode(fit: AnnealFit) -> float:
    """Log likelihood of the fit points at the posterior mode (the fitter's point estimate)."""
    res = fit.result
    data = {k: fit.points[k].to_numpy(np.float64) for k in F.get_form(res.form).inputs}
    y = fit.points["loss"].to_numpy(np.float64)
    p = {k: np.asarray([[v]]) for k, v in res.point.items()}
    r = np.log(y) - mean_log_loss(res.form, p, data).reshape(-1)
    if res.noise == "student_t":
        return float(np.sum(st.t.logpdf(r, res.df, scale=res.point["sigma"])))
    return float(np.sum(st.norm.logpdf(r, scale=res.point["sigma"])))


def lambda_weights(profile: Mapping[float, float]) -> dict[float, float]:
    """Posterior weight of each λ from its maximised log likelihood, uniform prior on the grid.

    Every λ has the same parameters and data, so the BIC approximation of the marginal
    likelihood (Schwarz 1978; Raftery 1995) reduces to exp(max log likelihood); averaging the
    predictions with these weights is Bayesian model averaging (Hoeting et al. 1999).
    """
    top = max(profile.values())
    w = {k: math.exp(v - top) for k, v in profile.items()}
    total = sum(w.values())
    return {k: v / total for k, v in w.items()}


def fit_runs(
    runs_df: pd.DataFrame,
    curves_df: pd.DataFrame,
    run_ids: Sequence[str],
    *,
    target: str = "loss",
    points: int | None = POINTS,
    lam: float | str = "auto",
    seed: int = 0,
    **fit_kw: Any,
) -> AnnealFit:
    """Fit the law to runs' curves; lam='auto' averages over the λ of LAMBDA_GRID.

    Why average rather than pick: one curve rarely fixes λ (on a 1000-step WSD run the log
    likelihood varied by < 2 over the grid) while the annealing area of a differently shaped
    schedule, and so its predicted loss, depends on it strongly; a chosen λ leaves that
    uncertainty out of the intervals. Grid values with weight < LAMBDA_MIN_WEIGHT are dropped.
    """
    if lam != "auto":
        if isinstance(lam, str) or not 0 <= float(lam) < 1:
            raise ValueError(f"lambda: 'auto' or a number in [0, 1), got {lam!r}")
        lam = float(lam)
    grid = LAMBDA_GRID if lam == "auto" else (lam,)
    # one likelihood weight for every λ (the residuals' autocorrelation barely depends on it),
    # so their log likelihoods stay comparable
    pts, full = (
        curve_points(runs_df, curves_df, run_ids, target=target, points=n, lam=LAMBDA)
        for n in (points, None)
    )
    weight = (
        _n_eff(pts, _residual_acf(_map(pts, seed), full)) / len(pts)
        if (pts["S2"] > 0).any()
        else 1.0
    )
    profile: dict[float, float] = {}
    fits: dict[float, AnnealFit] = {}
    full: dict[float, pd.DataFrame] = {}
    # the λ weights come from each λ's posterior mode, which a Laplace fit finds; NUTS is then
    # run only for the λ that keep weight
    auto = lam == "auto" and fit_kw.get("method", "nuts") == "nuts"
    kw = fit_kw | {"method": "laplace"} if auto else fit_kw
    for cand in grid:
        # the same points whatever λ (thinned on the paper's λ's S2), so fits can be compared
        pts, full[cand] = (
            curve_points(
                runs_df,
                curves_df,
                run_ids,
                target=target,
                points=n,
                lam=cand,
                thin_lam=LAMBDA,
            )
            for n in (points, None)
        )
        if (pts["S2"] > 0).any() or len(grid) == 1:
            fits[cand] = fit_curves(
                pts, target=target, lam=cand, seed=seed, full=full[cand], weight=weight, **kw
            )
            # the tempered log likelihood: the evidence of n_eff independent points
            profile[cand] = weight * _loglik_at_mode(fits[cand])
    if lam != "auto":
        return fits[lam]
    if not profile:
        raise ValueError(
            "the fit runs never anneal the LR (S2 = 0 at every point), so the annealing "
            "term C cannot be fitted; include a run with a decay (wsd or cosine)"
        )
    weights = {k: w for k, w in lambda_weights(profile).items() if w >= LAMBDA_MIN_WEIGHT}
    total = sum(weights.values())
    if auto:
        fits = {
            k: fit_curves(
                fits[k].points,
                target=target,
                lam=k,
                seed=seed,
                full=full[k],
                weight=weight,
                **fit_kw,
            )
            for k in weights
        }
    members = tuple(
        LambdaFit(k, w / total, fits[k].result, fits[k].points) for k, w in weights.items()
    )
    top = max(members, key=lambda m: m.weight)
    fit = replace(fits[top.lam], lambda_profile=profile, members=members)
    if top.weight < 0.9:
        fit.caveats.append(
            f"the fit runs do not fix lambda (most probable {top.lam:g} has weight "
            f"{top.weight:.2f}): predictions average over it, and a schedule whose annealing "
            "area depends on lambda unlike the fitted runs' gets a wide interval; fitting two "
            "differently shaped curves (e.g. wsd and cosine) pins lambda down"
        )
    return fit


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------


def _decades(lo: float, hi: float, v: np.ndarray) -> np.ndarray:
    lv = np.log10(v)
    d = np.maximum(0.0, np.maximum(lv - np.log10(hi), np.log10(lo) - lv))
    # a logged float32 LR and its float64 plan differ by ~1e-7: not an extrapolation
    return np.where(d < DECADES_TOL, 0.0, d)


def _member_draws(
    fit: AnnealFit,
    m: LambdaFit,
    lr: np.ndarray,
    s: np.ndarray,
    N: float | None,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Posterior-predictive loss draws (draws, steps) under one λ, with S1, S2 and decades."""
    res, pts = m.result, m.points
    S1, S2 = areas(lr, lam=m.lam)
    x = {"S1": S1[s], "S2p1": 1.0 + S2[s]}
    d = _decades(pts["S1"].min(), pts["S1"].max(), S1[s])
    # S2 is an input of the law like S1: decades above the largest fitted S2 count alike
    # (below it there is data down to S2 = 0)
    S2max = float(pts["S2"].max())
    d_S2 = np.log10(np.maximum(S2[s], S2max) / S2max)
    d_S2 = np.where(d_S2 < DECADES_TOL, 0.0, d_S2)
    if fit.joint:
        x["N"] = np.full(s.size, float(N))
        d = np.maximum(d, _decades(pts["N"].min(), pts["N"].max(), x["N"]))
    d_all = np.maximum(d, d_S2)
    mu = mean_log_loss(res.form, res.samples, x).reshape(-1, s.size)
    sig = noise_scale(res)[:, None]
    if mu.shape[0] < PREDICTIVE_DRAWS:
        rep = -(-PREDICTIVE_DRAWS // mu.shape[0])
        mu, sig = np.repeat(mu, rep, axis=0), np.repeat(sig, rep, axis=0)
    eps = (
        rng.standard_t(res.df, mu.shape)
        if res.noise == "student_t"
        else rng.standard_normal(mu.shape)
    )
    disc = res.discrepancy.scale(d_all)[None] * rng.standard_normal(mu.shape)
    L = np.exp(mu + sig * (eps + disc))
    return {"L": L, "S1": S1[s], "S2": S2[s], "d": d, "d_S2": d_S2, "d_all": d_all}


def predict_lr(
    fit: AnnealFit,
    lr_K: Any,
    *,
    N: float | None = None,
    steps: Sequence[int] | None = None,
    grid: int = 120,
    seed: int = 0,
    return_draws: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, np.ndarray]:
    """Posterior-predictive loss (fit's target) at steps of a run with LR lr_K per update.

    Each draw adds the fit's observation noise and its model discrepancy, whose sd grows with
    the decades S1, S2 (above its fitted maximum) and, jointly over sizes, N lie beyond the
    fitted points (extrapolation.Discrepancy); with several λ (fit.mixture) the draws are pooled
    in proportion to their weights. Steps default to `grid` post-warmup steps (the last
    included). Columns: step, S1, S2 (most probable λ), q5/q25/q50/q75/q95, mean,
    decades_beyond, extrapolated (S1 or N outside the fitted range), S2_decades_beyond and
    S2_beyond (more annealing area than any fitted point, under any λ averaged over).
    """
    lr = np.asarray(lr_K, np.float64)
    off = UPDATES_BEHIND[fit.target]
    if steps is None:
        cand = np.arange(peak_index(lr) + 1 + off, lr.size + 1)
        steps = cand[thin(cand, grid)] if cand.size else np.array([lr.size])
    k = np.asarray(steps, int)
    s = k - off
    if (s < 1).any() or (k > lr.size).any():
        raise ValueError(f"predict: steps must lie in {1 + off}..{lr.size}")
    if fit.joint and N is None:
        raise ValueError("predict: a fit over several sizes needs N")
    rng = np.random.default_rng(seed)
    mix = fit.mixture
    parts = [_member_draws(fit, m, lr, s, N, rng) for m in mix]
    top = parts[[m.lam for m in mix].index(fit.lam)]
    L = parts[0]["L"]
    if len(mix) > 1:
        total = PREDICTIVE_DRAWS * len(mix)
        L = np.concatenate(
            [
                p["L"][rng.integers(0, p["L"].shape[0], max(1, round(m.weight * total)))]
                for m, p in zip(mix, parts)
            ]
        )
    q = np.quantile(L, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
    out = pd.DataFrame({"step": k, "S1": top["S1"], "S2": top["S2"]})
    for name, row in zip(("q5", "q25", "q50", "q75", "q95"), q):
        out[name] = row
    out["mean"] = L.mean(0)
    out["decades_beyond"] = top["d_all"]
    out["extrapolated"] = top["d"] > 0
    out["S2_decades_beyond"] = top["d_S2"]
    out["S2_beyond"] = np.any([p["d_S2"] > 1e-9 for p in parts], axis=0)
    return (out, L) if return_draws else out


def prediction_line(fit: AnnealFit, row: Mapping[str, Any], label: str) -> str:
    """One printed prediction: median, 90% interval, convention and every warning it needs."""
    what = {
        "loss": "train loss (logged at step k, measured after k-1 updates)",
        "eval_loss": "eval loss (after k updates)",
    }[fit.target]
    flags = []
    if row["extrapolated"]:
        flags.append(
            f"EXTRAPOLATED: S1 {'or N ' if fit.joint else ''}beyond the fitted range (S1 in "
            f"[{fit.points['S1'].min():.3g}, {fit.points['S1'].max():.3g}])"
        )
    if row["S2_beyond"] and row["S2_decades_beyond"] > 0:
        flags.append(
            f"S2 = {row['S2']:.3g} exceeds every fitted point's (max {fit.points['S2'].max():.3g}"
            f", {row['S2_decades_beyond']:.2g} decades): the linear C*S2 term is extrapolated"
        )
    elif row["S2_beyond"]:
        flags.append(
            "under another lambda averaged over, S2 exceeds every fitted point's: the linear "
            "C*S2 term is extrapolated there"
        )
    if fit.points["run_id"].nunique() == 1:
        flags.append("fitted on one curve: the transfer to other schedules is untested")
    if not fit.ok:
        flags.append("DIAGNOSTICS FAILED: " + "; ".join(fit.problems))
    warn = f" WARNING: {'; '.join(flags)}" if flags else " (within the fitted S1 range)"
    w = ", ".join(f"{m.lam:g}: {m.weight:.2f}" for m in fit.mixture)
    lam = f", averaged over lambda with weights {w}" if len(fit.mixture) > 1 else ""
    return (
        f"{label}: {what} at step {int(row['step'])} = {row['q50']:.4f} "
        f"[{row['q5']:.4f}, {row['q95']:.4f}] (median, 90% central posterior-predictive interval "
        f"with noise and model discrepancy{lam}; S1 = {row['S1']:.4g}, S2 = {row['S2']:.4g})."
        f"{warn}"
    )


def check_against(
    fit: AnnealFit, pred: pd.DataFrame, observed: pd.DataFrame
) -> dict[str, float | int]:
    """Share of observed points (step, loss) inside the 90% band and the final step's numbers."""
    m = observed.merge(pred, on="step", how="inner")
    inside = (m["loss"] >= m["q5"]) & (m["loss"] <= m["q95"])
    last = m.iloc[int(np.argmax(m["step"].to_numpy()))]
    return {
        "points": int(len(m)),
        "coverage_90": float(inside.mean()) if len(m) else float("nan"),
        "final_step": int(last["step"]),
        "final_observed": float(last["loss"]),
        "final_q5": float(last["q5"]),
        "final_q50": float(last["q50"]),
        "final_q95": float(last["q95"]),
        "final_inside": bool(last["q5"] <= last["loss"] <= last["q95"]),
    }


def schedule_config(base: TrainConfig, schedule: str, steps: int | None = None) -> TrainConfig:
    """base with another schedule (and length): the config of a run not made."""
    return replace(base, schedule=schedule, steps=int(steps or base.steps))


# --------------------------------------------------------------------------------------------
# Plot and save
# --------------------------------------------------------------------------------------------


def plot(
    fit: AnnealFit,
    curves: Mapping[str, tuple[pd.DataFrame, pd.DataFrame | None, str]],
    out_stem: str | Path,
) -> list[Path]:
    """Loss vs step: per label (prediction, observed points or None, kind 'fit'|'predicted'),
    the 90% predictive band with its median and the observed points."""
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (label, (pred, obs, kind)) in enumerate(curves.items()):
        color = f"C{i}"
        ls = "-" if kind == "fit" else "--"
        ax.plot(pred["step"], pred["q50"], color=color, ls=ls, lw=1.2, label=f"{label} ({kind})")
        ax.fill_between(pred["step"], pred["q5"], pred["q95"], color=color, alpha=0.15, lw=0)
        if pred["extrapolated"].any():
            # NaN breaks the line, so separate extrapolated stretches are not joined
            ext = pred["q50"].where(pred["extrapolated"])
            ax.plot(pred["step"], ext, color=color, lw=2.5, alpha=0.5)
        if obs is not None and len(obs):
            ax.scatter(obs["step"], obs["loss"], s=6, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(fit.target)
    ax.legend(fontsize=7)
    status = "" if fit.ok else " — DIAGNOSTICS FAILED"
    many = len(fit.mixture) > 1
    lam = f"averaged over {len(fit.mixture)} λ" if many else f"λ={fit.lam:g}"
    ax.set_title(
        f"L = L0 + A S1^-α − C S2 (Tissue et al. 2024), {lam}: 90% predictive bands; "
        f"thick = extrapolated in S1{status}",
        fontsize=7,
    )
    return plotting.save_figure(fig, out_stem)


def save(
    fit: AnnealFit, out: str | Path, predictions: Mapping[str, pd.DataFrame], extra: dict
) -> list[Path]:
    """Write anneal.json (fit, predictions' final steps, checks) and predictions.csv."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = fit.summary() | extra
    info["predictions"] = {
        k: p.iloc[-1][
            ["step", "S1", "S2", "q5", "q50", "q95", "decades_beyond", "extrapolated", "S2_beyond"]
        ].to_dict()
        for k, p in predictions.items()
    }
    paths = [out / "anneal.json", out / "predictions.csv"]
    paths[0].write_text(json.dumps(info, indent=2, default=lambda v: v.item()))
    pd.concat([p.assign(curve=k) for k, p in predictions.items()]).to_csv(paths[1], index=False)
    return paths
