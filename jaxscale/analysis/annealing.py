"""Curve-level fits of the LR-annealing loss law (Tissue et al. 2024, arXiv 2408.11029).

Tissue et al. 2024 (eq. 1) describe every point of a loss curve, whatever the LR schedule, as

    L(s) = L0 + A · S1(s)^-α − C · S2(s)

    S1(s) = Σ_{i≤s} η_i                                   forward area
    S2(s) = Σ_{i≤s} m_i,  m_i = λ · m_{i−1} + (η_{i−1} − η_i)   annealing area (with momentum)

with η_i the absolute learning rate of update i and λ the decay factor of the annealing
momentum (λ = 0.999 is the paper's default; fit_runs can choose it). The warmup is left
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
steps, and over the annealing area S2, where C is learned), fitted with Student-t noise on log
loss, and the lag-1 autocorrelation of the residuals along each curve is measured and reported;
predictions carry the fitter's model-discrepancy term, which grows with the decades S1, S2 and
N lie beyond the fitted points.
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
# Candidates when λ is chosen by the fit runs: annealing delays 1/(1 − λ) of 10 to 1000 steps.
LAMBDA_GRID = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
LAMBDA_LR_MARGIN = 1.92  # χ²₁ 95% quantile / 2: a likelihood-ratio test of one extra parameter
REFERENCE = (
    "Tissue et al. 2024, 'Scaling Law with Learning Rate Annealing', arXiv 2408.11029, eq. 1"
)
TARGETS = ("loss", "eval_loss")
# Metrics convention (core.train.record): the row of step k holds the LR of update k, the train
# loss measured *before* update k (k − 1 updates done) and the eval loss *after* it (k done).
UPDATES_BEHIND = {"loss": 1, "eval_loss": 0}
POINTS = 36  # curve points kept per run after thinning
# Residuals this autocorrelated along a curve mean the thinned points still share their errors.
AUTOCORR_MAX = 0.5
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


def _lag1(r: np.ndarray) -> float:
    r = r - r.mean()
    den = float(np.sum(r * r))
    return float(np.sum(r[1:] * r[:-1]) / den) if r.size > 2 and den > 0 else float("nan")


@dataclass(frozen=True)
class AnnealFit:
    """The law fitted to curve points: the fitter's FitResult plus the points and conventions."""

    result: F.FitResult
    points: pd.DataFrame
    target: str
    lam: float
    autocorr: dict[str, float]  # lag-1 residual autocorrelation along each fitted run
    caveats: list[str] = field(default_factory=list)
    # λ -> maximised log likelihood of the fit points, when λ was chosen by the fit runs
    lambda_profile: dict[float, float] = field(default_factory=dict)

    @property
    def joint(self) -> bool:
        return self.result.form == FORM_SIZES.name

    @property
    def ok(self) -> bool:
        return self.result.ok

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
        how = "given"
        if self.lambda_profile:
            prof = ", ".join(f"{k:g}: {v:.1f}" for k, v in self.lambda_profile.items())
            how = (
                f"maximised log likelihood per lambda: {prof}; the paper's {LAMBDA:g} is kept "
                f"unless another beats it by > {LAMBDA_LR_MARGIN}"
            )
        lines = [
            f"LR-annealing law ({REFERENCE}), lambda = {self.lam:g} ({how}), fitted to the "
            f"{self.target!r} column of: {runs}",
            self.result.describe(),
            f"residual lag-1 autocorrelation along each curve: {ac}",
            *(f"caveat: {c}" for c in self.caveats),
        ]
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """JSON-ready parameters (median, q5, q95), diagnostics and caveats."""
        t = self.result.table()
        return {
            "law": REFERENCE,
            "form": self.result.form,
            "lambda": self.lam,
            "target": self.target,
            "intervals": F.INTERVAL,
            "ok": self.ok,
            "problems": self.result.problems,
            "caveats": [*self.result.caveats, *self.caveats],
            "residual_lag1_autocorr": self.autocorr,
            "lambda_profile_loglik": {str(k): v for k, v in self.lambda_profile.items()},
            "runs": sorted(set(self.points["run_id"])),
            "params": {
                k: {"median": float(r["median"]), "q5": float(r["q5"]), "q95": float(r["q95"])}
                for k, r in t.iterrows()
            },
        }


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
) -> AnnealFit:
    """Fit the law to curve points (curve_points): one size, or jointly over sizes."""
    points = points.reset_index(drop=True)
    if not (points["S2"] > 0).any():
        raise ValueError(
            "the fit runs never anneal the LR (S2 = 0 at every point), so the annealing term "
            "C cannot be fitted; include a run with a decay (wsd or cosine)"
        )
    joint = points["N"].nunique() > 1
    fm = FORM_SIZES if joint else FORM
    data = {k: points[k].to_numpy(np.float64) for k in fm.inputs} | {
        "loss": points["loss"].to_numpy(np.float64)
    }
    with warnings.catch_warnings():
        # runs sharing a schedule prefix (constant and wsd) repeat (S1, S2) points; merged
        # points are one point of evidence, as the fitter's caveat says
        warnings.simplefilter("ignore", F.ReplicatesMergedWarning)
        res = F.fit(
            data,
            fm,
            method=method,
            chains=chains,
            warmup=warmup,
            draws=draws,
            seed=seed,
            quiet=quiet,
        )
    mu = np.median(mean_log_loss(fm.name, res.samples, data).reshape(-1, len(points)), axis=0)
    r = np.log(points["loss"].to_numpy(np.float64)) - mu
    ac = {}
    for rid, g in points.groupby("run_id", sort=False):
        order = np.argsort(g["s"].to_numpy())
        ac[str(rid)] = _lag1(r[g.index.to_numpy()][order])
    caveats = []
    bad = {k: v for k, v in ac.items() if v > AUTOCORR_MAX}
    if bad:
        caveats.append(
            f"residuals along {len(bad)} curve(s) are autocorrelated (lag-1 up to "
            f"{max(bad.values()):.2f} > {AUTOCORR_MAX}): the points share their errors, so the "
            "parameter intervals are too narrow; quote the predictive intervals (they carry the "
            "model-discrepancy term) or fit fewer --points"
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
    return AnnealFit(res, points.reset_index(drop=True), target, lam, ac, caveats)


def _max_loglik(points: pd.DataFrame, lam: float, seed: int) -> float:
    """Log likelihood of the points at the posterior mode of the law with this λ."""
    fm = FORM_SIZES if points["N"].nunique() > 1 else FORM
    data = {k: points[k].to_numpy(np.float64) for k in fm.inputs}
    y = points["loss"].to_numpy(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", F.ReplicatesMergedWarning)
        res = F.fit(data | {"loss": y}, fm, method="map", seed=seed, quiet=True)
    p = {k: np.asarray([[v]]) for k, v in res.point.items()}
    r = np.log(y) - mean_log_loss(fm.name, p, data).reshape(-1)
    return float(np.sum(st.t.logpdf(r, res.df, scale=res.point["sigma"])))


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
    """Fit the law to runs' curves; lam='auto' takes the λ of LAMBDA_GRID under which the
    law fits the runs best (maximised likelihood; every λ has the same parameters)."""
    profile: dict[float, float] = {}
    if lam == "auto":
        for cand in LAMBDA_GRID:
            pts = curve_points(
                runs_df,
                curves_df,
                run_ids,
                target=target,
                points=points,
                lam=cand,
                thin_lam=LAMBDA,
            )
            if (pts["S2"] > 0).any():
                profile[cand] = _max_loglik(pts, cand, seed)
        if not profile:
            raise ValueError(
                "the fit runs never anneal the LR (S2 = 0 at every point), so the annealing "
                "term C cannot be fitted; include a run with a decay (wsd or cosine)"
            )
        best = max(profile, key=profile.get)
        # the paper's λ unless the runs prefer another by more than χ²₁(0.95)/2 in log likelihood
        keep = LAMBDA in profile and profile[best] - profile[LAMBDA] <= LAMBDA_LR_MARGIN
        lam = LAMBDA if keep else best
    elif isinstance(lam, str) or not 0 <= float(lam) < 1:
        raise ValueError(f"lambda: 'auto' or a number in [0, 1), got {lam!r}")
    # the same points whatever λ, so fits with different λ see the same data
    pts = curve_points(
        runs_df, curves_df, run_ids, target=target, points=points, lam=float(lam), thin_lam=LAMBDA
    )
    fit = fit_curves(pts, target=target, lam=float(lam), seed=seed, **fit_kw)
    if profile:
        fit = replace(fit, lambda_profile=profile)
        if lam != LAMBDA:
            fit.caveats.append(
                f"lambda = {lam:g} (annealing delay ~{1 / (1 - lam):.0f} steps) fits these runs "
                f"better than the paper's {LAMBDA:g}; its choice is not part of the intervals"
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
    fitted points (extrapolation.Discrepancy). Steps default to `grid` post-warmup steps (the
    last included). Columns: step, S1, S2, q5/q25/q50/q75/q95, mean, decades_beyond (the
    largest of the three), extrapolated (S1 or N outside the fitted range), S2_decades_beyond
    and S2_beyond (more annealing area than any fitted point).
    """
    res = fit.result
    lr = np.asarray(lr_K, np.float64)
    S1, S2 = areas(lr, lam=fit.lam)
    off = UPDATES_BEHIND[fit.target]
    if steps is None:
        cand = np.arange(peak_index(lr) + 1 + off, lr.size + 1)
        steps = cand[thin(cand, grid)] if cand.size else np.array([lr.size])
    k = np.asarray(steps, int)
    s = k - off
    if (s < 1).any() or (k > lr.size).any():
        raise ValueError(f"predict: steps must lie in {1 + off}..{lr.size}")
    pts = fit.points
    if fit.joint and N is None:
        raise ValueError("predict: a fit over several sizes needs N")
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
    rng = np.random.default_rng(seed)
    eps = (
        rng.standard_t(res.df, mu.shape)
        if res.noise == "student_t"
        else rng.standard_normal(mu.shape)
    )
    disc = res.discrepancy.scale(d_all)[None] * rng.standard_normal(mu.shape)
    L = np.exp(mu + sig * (eps + disc))
    q = np.quantile(L, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
    out = pd.DataFrame({"step": k, "S1": S1[s], "S2": S2[s]})
    for name, row in zip(("q5", "q25", "q50", "q75", "q95"), q):
        out[name] = row
    out["mean"] = L.mean(0)
    out["decades_beyond"] = d_all
    out["extrapolated"] = d > 0
    out["S2_decades_beyond"] = d_S2
    out["S2_beyond"] = d_S2 > 1e-9
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
    if row["S2_beyond"]:
        flags.append(
            f"S2 = {row['S2']:.3g} exceeds every fitted point's (max {fit.points['S2'].max():.3g}"
            f", {row['S2_decades_beyond']:.2g} decades): the linear C*S2 term is extrapolated"
        )
    if fit.points["run_id"].nunique() == 1:
        flags.append("fitted on one curve: the transfer to other schedules is untested")
    if not fit.ok:
        flags.append("DIAGNOSTICS FAILED: " + "; ".join(fit.result.problems))
    warn = f" WARNING: {'; '.join(flags)}" if flags else " (within the fitted S1 range)"
    return (
        f"{label}: {what} at step {int(row['step'])} = {row['q50']:.4f} "
        f"[{row['q5']:.4f}, {row['q95']:.4f}] (median, 90% central posterior-predictive interval "
        f"with noise and model discrepancy; S1 = {row['S1']:.4g}, S2 = {row['S2']:.4g}).{warn}"
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
        ext = pred[pred["extrapolated"]]
        if len(ext):
            ax.plot(ext["step"], ext["q50"], color=color, lw=2.5, alpha=0.5)
        if obs is not None and len(obs):
            ax.scatter(obs["step"], obs["loss"], s=6, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(fit.target)
    ax.legend(fontsize=7)
    status = "" if fit.ok else " — DIAGNOSTICS FAILED"
    ax.set_title(
        f"L = L0 + A S1^-α − C S2 (Tissue et al. 2024), λ={fit.lam:g}: 90% predictive bands; "
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
