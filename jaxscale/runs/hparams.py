"""Hyperparameter rules: the peak LR (and batch size) a study gives each run from its size.

A rule maps N (non-embedding parameters, Kaplan et al. 2020), D (training tokens) and B (tokens
per optimizer step, batch × context) to a value:

    Constant(3e-3)                               one LR for every run (the old quickstart)
    PowerLaw(coef, exp_N, exp_D, exp_B)          coef · N^exp_N · D^exp_D · B^exp_B
    PowerLaw.from_lr_study("results/lr-tiny")    fitted to the kit's own LR study, with its interval
    StepLaw()                                    Li et al. 2025: η = 1.79 N^-0.713 D^0.307,
                                                 StepLaw().batch: B = 0.58 D^0.571 tokens
    MuTransfer(lr, base_width, base_depth=None)  the LR tuned at a μP base shape, for every
                                                 width (and depth): μP absorbs the scaling

The grids (isoflop_plan, nd_grid_runs, lr_grid_runs) apply a rule per run and record its
description in train.lr_rule / train.batch_rule beside the value it produced (train.lr,
train.batch_size); neither description is part of the run ID. A rule knows where it was
measured: `rule.at(N, D, B)` gives the value, its 90% interval (fitted rules) and a warning for
every axis on which it extrapolates; `explain(runs, rule)` tabulates that for a whole study.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from jaxscale.config import ConfigError, ModelConfig, RunConfig, TrainConfig
from jaxscale.runs import store
from jaxscale.runs.rundir import RunDir

LEVEL = 0.9
Z90 = 1.6448536269514722  # standard normal 95% quantile: a two-sided 90% interval
AXES = ("N", "D", "B")
# Allowed ratio beyond a measured range before a rule's value counts as extrapolated.
SLACK = 1.25


@dataclass(frozen=True)
class Domain:
    """Where a rule was measured: (min, max) of N, D and B (tokens/step); None = unknown."""

    N: tuple[float, float] | None = None
    D: tuple[float, float] | None = None
    B: tuple[float, float] | None = None

    def warnings(self, N: float, D: float, B: float) -> tuple[str, ...]:
        """One message per axis on which (N, D, B) lies beyond the measured range (× SLACK)."""
        out = []
        for name, v, rng in (("N", N, self.N), ("D", D, self.D), ("B", B, self.B)):
            if rng is None:
                continue
            lo, hi = rng
            span = f"{lo:.3g}" if lo == hi else f"{lo:.3g}–{hi:.3g}"
            if v < lo / SLACK:
                out.append(f"{name}={v:.3g} is {lo / v:.3g}× below the measured {name} ({span})")
            elif v > hi * SLACK:
                out.append(f"{name}={v:.3g} is {v / hi:.3g}× above the measured {name} ({span})")
        return tuple(out)


@dataclass(frozen=True)
class RuleValue:
    """A rule's value at one (N, D, B), its 90% interval (NaN: none) and its warnings."""

    value: float
    lo: float = math.nan
    hi: float = math.nan
    warnings: tuple[str, ...] = ()

    def __str__(self) -> str:
        iv = (
            f" [{LEVEL:.0%}: {self.lo:.3g}, {self.hi:.3g}]"
            if math.isfinite(self.lo)
            else " (no interval)"
        )
        warn = f"  WARNING: extrapolated: {'; '.join(self.warnings)}" if self.warnings else ""
        return f"{self.value:.3g}{iv}{warn}"


class Rule:
    """A hyperparameter as a function of N, D and B (tokens/step); subclasses are frozen."""

    def __call__(self, N: float, D: float, B: float) -> float:
        raise NotImplementedError

    def at(self, N: float, D: float, B: float) -> RuleValue:
        """The value at (N, D, B) with its interval and extrapolation warnings."""
        return RuleValue(self(N, D, B))

    def describe(self) -> str:
        """One line recorded in train.lr_rule / train.batch_rule."""
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Rule):
    """The same value for every run, set by hand (no interval, no domain)."""

    value: float

    def __post_init__(self) -> None:
        _check_positive("Constant.value", self.value)

    def __call__(self, N: float, D: float, B: float) -> float:
        return float(self.value)

    def describe(self) -> str:
        return f"constant {self.value:.3g}"


@dataclass(frozen=True)
class LogCov:
    """Covariance of (log10 coef, exp_N, exp_D, exp_B) of a power law fitted in log10 space;
    the law's interval at (N, D, B) follows by the delta method (exact: log10 value is linear
    in these parameters). Exponents held fixed have zero rows."""

    cov: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        m = np.asarray(self.cov, float)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)) or not np.allclose(m, m.T):
            raise ConfigError("LogCov.cov: must be a finite symmetric 4×4 matrix")
        object.__setattr__(self, "cov", tuple(tuple(float(v) for v in row) for row in m))

    def sd_log10(self, N: float, D: float, B: float) -> float:
        """Standard error of log10 of the law's value at (N, D, B)."""
        g_4 = np.array([1.0, math.log10(N), math.log10(D), math.log10(B)])
        return float(math.sqrt(max(g_4 @ np.asarray(self.cov) @ g_4, 0.0)))

    def param_sd(self, i: int) -> float:
        """Standard error of parameter i of (log10 coef, exp_N, exp_D, exp_B)."""
        return math.sqrt(self.cov[i][i])


@dataclass(frozen=True)
class PowerLaw(Rule):
    """value = coef · N^exp_N · D^exp_D · B^exp_B (N non-embedding, D tokens, B tokens/step),
    with the covariance of a fit (`interval`) and the ranges it was measured on (`domain`)."""

    coef: float
    exp_N: float
    exp_D: float = 0.0
    exp_B: float = 0.0
    interval: LogCov | None = None
    domain: Domain = field(default_factory=Domain)
    source: str = ""

    def __post_init__(self) -> None:
        _check_positive("PowerLaw.coef", self.coef)
        for n in ("exp_N", "exp_D", "exp_B"):
            v = getattr(self, n)
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ConfigError(f"PowerLaw.{n}: must be a finite number, got {v!r}")

    def __call__(self, N: Any, D: Any, B: Any) -> Any:
        """The value (an array for array inputs, which broadcast)."""
        v = self.coef * np.power(N, self.exp_N) * np.power(D, self.exp_D) * np.power(B, self.exp_B)
        return float(v) if np.ndim(v) == 0 else np.asarray(v, float)

    def at(self, N: float, D: float, B: float) -> RuleValue:
        v = self(N, D, B)
        warn = self.domain.warnings(N, D, B)
        if self.interval is None:
            return RuleValue(v, warnings=warn)
        half = Z90 * self.interval.sd_log10(N, D, B)
        return RuleValue(v, v / 10**half, v * 10**half, warn)

    def describe(self) -> str:
        terms = [f"{self.coef:.3g}"]
        for name in AXES:
            e = getattr(self, f"exp_{name}")
            if e:
                sd = self.interval.param_sd(1 + AXES.index(name)) if self.interval else 0.0
                terms.append(f"{name}^{e:.3f}" + (f"±{Z90 * sd:.3f}" if sd else ""))
        notes = [f"±: {LEVEL:.0%}"] if self.interval is not None else []
        notes += [self.source] if self.source else []
        return "·".join(terms) + (f" ({'; '.join(notes)})" if notes else "")

    @classmethod
    def fit(
        cls,
        N: Sequence[float],
        D: Sequence[float],
        B: Sequence[float],
        value: Sequence[float],
        log10_se: Sequence[float] | None = None,
        *,
        axes: Sequence[str] = AXES,
        source: str = "",
    ) -> PowerLaw:
        """Weighted least squares of log10 value on log10 N, D, B (weights 1/se²), fitting an
        exponent only for an axis in `axes` the points vary on (the others are held at 0,
        their ranges still recorded in the domain). With spare points whose scatter exceeds
        the SEs (reduced chi² > 1), or without SEs, the noise is estimated from the residuals
        and the interval is Student-t's; otherwise the SEs alone set it."""
        raw = {k: np.asarray(v, float) for k, v in zip(AXES, (N, D, B))}
        X = {k: np.log10(v) for k, v in raw.items()}
        y = np.log10(np.asarray(value, float))
        n = y.size
        se = np.ones(n) if log10_se is None else np.asarray(log10_se, float)
        ok = np.isfinite(y) & np.all([np.isfinite(x) for x in X.values()], 0)
        if log10_se is not None:
            ok &= np.isfinite(se) & (se > 0)
        if ok.sum() < 2:
            raise ValueError(f"a power-law rule needs >= 2 usable points, got {int(ok.sum())}")
        free = [k for k in AXES if k in axes and np.unique(X[k][ok]).size >= 2]
        A_PxK = np.stack([np.ones(int(ok.sum()))] + [X[k][ok] for k in free], 1)
        if np.linalg.matrix_rank(A_PxK) < A_PxK.shape[1] or A_PxK.shape[0] < A_PxK.shape[1]:
            raise ValueError(
                f"the points do not separate the exponents of {free}: {int(ok.sum())} points; "
                "vary one axis at a time at a shared value of the others"
            )
        w = 1 / se[ok] ** 2
        AtW = A_PxK.T * w
        cov_KxK = np.linalg.inv(AtW @ A_PxK)
        beta = cov_KxK @ AtW @ y[ok]
        r = y[ok] - A_PxK @ beta
        dof = A_PxK.shape[0] - A_PxK.shape[1]
        if log10_se is None and dof == 0:
            raise ValueError("without standard errors a fit needs more points than parameters")
        chi2 = float(r @ (w * r))
        if log10_se is None or (dof > 0 and chi2 > dof):
            # The noise is estimated from the residuals (no SEs, or scatter beyond them): widen
            # the normal 90% interval to Student-t's on `dof` degrees of freedom.
            scale = chi2 / dof * (stats.t.ppf(0.5 + LEVEL / 2, dof) / Z90) ** 2
        else:
            scale = 1.0
        idx = [0] + [1 + AXES.index(k) for k in free]
        full = np.zeros((4, 4))
        full[np.ix_(idx, idx)] = cov_KxK * scale
        exps = dict.fromkeys(AXES, 0.0) | {k: float(b) for k, b in zip(free, beta[1:])}
        rng = {k: (float(raw[k][ok].min()), float(raw[k][ok].max())) for k in AXES}
        return cls(
            coef=float(10 ** beta[0]),
            exp_N=exps["N"],
            exp_D=exps["D"],
            exp_B=exps["B"],
            interval=LogCov(tuple(map(tuple, full))),
            domain=Domain(**rng),
            source=source,
        )

    @classmethod
    def from_lr_study(
        cls, results: str | os.PathLike, *, analysis: str | os.PathLike | None = None
    ) -> PowerLaw:
        """LR* = coef · N^a · B^b fitted to the optima `jaxscale lr RESULTS` wrote (analysis,
        default RESULTS/analyses/lr.json): per-(N, batch) parabola vertices weighted by their
        SEs, optima at the grid's edge left out (Kaplan 2020 App. D.6). B is in tokens/step
        and D (the study's tokens per run) is recorded in the domain."""
        path = Path(analysis) if analysis else Path(results) / "analyses" / "lr.json"
        study = store.read_json(path)
        if study is None:
            raise ConfigError(
                f"no LR study at {path}: run `jaxscale lr {os.fspath(results)}` first "
                "(it writes analyses/lr.json)"
            )
        points = pd.DataFrame(study["points"])
        optima = pd.DataFrame(study["optima"])
        shape = _run_shapes(results, points["run_id"])
        pts = points.merge(shape, on="run_id")
        groups = pts.groupby(["N", "B"])[["context", "tokens"]].agg(["min", "max"])
        # lr.json files from before the EXTRAPOLATED flag have no such column.
        extrapolated = optima.get("extrapolated", pd.Series(False, index=optima.index))
        opt = optima[~optima["edge"].astype(bool) & ~extrapolated.astype(bool)]
        opt = opt[np.isfinite(opt["log10_lr_opt"].astype(float))]
        rows = []
        for _, r in opt.iterrows():
            g = groups.loc[(r["N"], r["B"])]
            if g[("context", "min")] != g[("context", "max")]:
                raise ConfigError(f"LR study group N={r['N']} B={r['B']} mixes context lengths")
            rows.append(
                {
                    "N": r["N"],
                    "D": g[("tokens", "min")],
                    "B": r["B"] * g[("context", "min")],
                    "lr": 10 ** r["log10_lr_opt"],
                    "se": r["log10_lr_opt_se"],
                }
            )
        if len(rows) < 2:
            raise ConfigError(
                f"{path}: {len(rows)} bracketed LR optimum (edge groups are left out); "
                "a rule needs at least two: widen the LR grid (`jaxscale lr` marks edge groups)"
            )
        df = pd.DataFrame(rows)
        src = f"fit to {os.fspath(results)}"
        se = df["se"].to_numpy(float)
        if not np.all(np.isfinite(se) & (se > 0)):
            # A vertex through exactly three LRs has no SE: weigh all optima alike rather than
            # drop those, and estimate the noise from the residuals.
            se, src = None, src + ", unweighted"
        return cls.fit(df["N"], df["D"], df["B"], df["lr"], se, source=src)


def _run_shapes(results: str | os.PathLike, run_ids: Sequence[str]) -> pd.DataFrame:
    """context length and planned tokens of each run (from its config.json)."""
    rows = []
    for rid in pd.unique(np.asarray(run_ids)):
        c = RunDir(store.as_path(results) / str(rid)).read_config()
        rows.append({"run_id": rid, "context": c.model.context_length, "tokens": c.total_tokens})
    return pd.DataFrame(rows)


# Approximate span of the Step Law dense grid (order of magnitude; see the paper for the runs).
STEP_LAW_DOMAIN = Domain(N=(1e8, 1e9), D=(1e9, 1e11))


@dataclass(frozen=True)
class StepLaw(PowerLaw):
    """Step Law (Li et al. 2025, arXiv 2503.04715, eq. 1): η_opt = 1.79 N^-0.713 D^0.307 with
    N non-embedding parameters and D tokens; `batch` is their B_opt = 0.58 D^0.571 tokens.
    Measured under a schedule whose final LR is fixed at `min_lr` = 1e-5 (the grids keep
    train.min_lr_ratio; experiments/step_law.py decays to 0, within 1e-5 of theirs). No
    interval is published with the constants, and they were measured on 1e8+ parameter
    models: treat them as a prior to test (docs/hyperparameters.md)."""

    coef: float = 1.79
    exp_N: float = -0.713
    exp_D: float = 0.307
    domain: Domain = STEP_LAW_DOMAIN
    source: str = "Step Law, Li et al. 2025"
    min_lr: float = 1e-5
    batch_coef: float = 0.58
    batch_exp_D: float = 0.571

    @property
    def batch(self) -> PowerLaw:
        """B_opt = 0.58 · D^0.571 tokens per step (Li et al. 2025 eq. 1), independent of N."""
        return PowerLaw(
            self.batch_coef,
            0.0,
            exp_D=self.batch_exp_D,
            domain=self.domain,
            source=self.source,
        )


@dataclass(frozen=True)
class MuTransfer(Rule):
    """μP transfer (Yang et al. 2022, "Tensor Programs V"): the peak LR tuned at base_width (and,
    with depth scaling, base_depth: CompleteP, Dey et al. 2025) serves every width (and depth)
    of a model parameterised from that base, whose per-layer factors absorb the scaling.
    `model(mc)` parameterises a model so; `check(mc)` says why a model would not transfer."""

    lr: float
    base_width: int
    base_depth: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        _check_positive("MuTransfer.lr", self.lr)
        for n in ("base_width", "base_depth"):
            v = getattr(self, n)
            if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                raise ConfigError(f"MuTransfer.{n}: must be a positive integer, got {v!r}")

    def __call__(self, N: float, D: float, B: float) -> float:
        return float(self.lr)

    def describe(self) -> str:
        depth = f", depth {self.base_depth} (1/L)" if self.base_depth else ""
        src = f" ({self.source})" if self.source else ""
        return f"μP transfer of {self.lr:.3g} tuned at width {self.base_width}{depth}{src}"

    def model(self, mc: ModelConfig) -> ModelConfig:
        """mc parameterised for this rule: μP from base_width (and 1/L depth scaling)."""
        depth = {"depth_scaling": "1/L", "base_depth": self.base_depth} if self.base_depth else {}
        return dataclasses.replace(mc, parameterization="mup", base_width=self.base_width, **depth)

    def check(self, mc: ModelConfig) -> tuple[str, ...]:
        """One message per way mc is not parameterised from this rule's base."""
        out = []
        if mc.parameterization != "mup" or mc.base_width != self.base_width:
            out.append(
                f"model is {mc.parameterization} (base_width {mc.base_width}), not μP from width "
                f"{self.base_width}: its best LR moves with width (MuTransfer.model sets it up)"
            )
        if self.base_depth and (mc.depth_scaling != "1/L" or mc.base_depth != self.base_depth):
            out.append(
                f"model has depth_scaling {mc.depth_scaling} (base_depth {mc.base_depth}), not "
                f"1/L from depth {self.base_depth}: its best LR moves with depth"
            )
        return tuple(out)


def _check_positive(name: str, v: Any) -> None:
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
        raise ConfigError(f"{name}: must be a positive finite number, got {v!r}")


# --- applying rules to runs -------------------------------------------------------------------


def batch_for(rule: Rule | None, train: TrainConfig, N: float, D: float, context: int) -> int:
    """Sequences per step: the rule's tokens/step over `context`, rounded to a multiple of
    train.grad_accum (at least one); train.batch_size without a rule."""
    if rule is None:
        return train.batch_size
    tokens = rule(N, D, float(train.batch_size * context))
    m = train.grad_accum
    return max(m, m * round(tokens / context / m))


def train_overrides(
    lr_rule: Rule | None,
    batch_rule: Rule | None,
    N: float,
    D: float,
    B: float,
    *,
    grid: str = "",
) -> dict[str, Any]:
    """TrainConfig fields a run gets from its rules at (N, D, B): lr, lr_rule, batch_rule;
    `grid` prefixes the LR rule's description (an LR grid around the rule)."""
    out: dict[str, Any] = {}
    if batch_rule is not None:
        out["batch_rule"] = batch_rule.describe()
    if lr_rule is None:
        return out
    lr = lr_rule(N, D, B)
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"LR rule {lr_rule.describe()} gives lr={lr} at N={N:.3g}, D={D:.3g}")
    return out | {"lr": lr, "lr_rule": grid + lr_rule.describe()}


def explain(
    runs: Sequence[RunConfig], lr_rule: Rule, batch_rule: Rule | None = None
) -> pd.DataFrame:
    """Per run: N, D, B (tokens/step), train.lr and the rule's value at the run with its 90%
    interval and extrapolation warnings (and the batch rule's, when given); a MuTransfer rule
    also warns for each run whose model is not parameterised from its base."""
    rows = []
    for r in runs:
        N, D, B = r.model.n_params_nonembedding, r.total_tokens, r.tokens_per_step
        v = lr_rule.at(N, D, B)
        warn = v.warnings + (lr_rule.check(r.model) if isinstance(lr_rule, MuTransfer) else ())
        row = {
            "name": r.name,
            "N": N,
            "D": D,
            "B_tokens": B,
            "lr": r.train.lr,
            "rule_lr": v.value,
            "rule_lr_q5": v.lo,
            "rule_lr_q95": v.hi,
            "warnings": "; ".join(warn),
        }
        if batch_rule is not None:
            b = batch_rule.at(N, D, B)
            row |= {"rule_B_tokens": b.value, "batch_warnings": "; ".join(b.warnings)}
        rows.append(row)
    return pd.DataFrame(rows)


# The kit's own LR study, `jaxscale sweep run experiments/lr.py --setting tiny` then
# `PowerLaw.from_lr_study("results/lr-tiny-v2")` (measured 2026-11-30, after the schedule was
# no longer applied twice): the bracketed optima 0.0416 at N=3,120, 0.0055/0.0085 at N=24,736
# (B = 512/1024 tokens) and 0.0033 at N=98,624, 150 steps, D = 76,800 tokens, context 64,
# cosine to 10%. Outside N 3k-99k, D = 76,800 and B 512-1024 its values carry warnings.
LR_STUDY_TINY = PowerLaw(
    coef=4.93898,
    exp_N=-0.667026,
    exp_B=0.0553274,
    interval=LogCov(
        (
            (4.60981, -0.388079, 0.0, -0.9857),
            (-0.388079, 0.0383522, 0.0, 0.0729448),
            (0.0, 0.0, 0.0, 0.0),
            (-0.9857, 0.0729448, 0.0, 0.228636),
        )
    ),
    domain=Domain(N=(3120.0, 98624.0), D=(76800.0, 76800.0), B=(512.0, 1024.0)),
    source="experiments/lr.py tiny",
)

# The kit's small byte-level models at 512 tokens/step: eight bracketed LR optima, two from the
# LR study (N = 3k, 25k at D = 76,800, context 64) and six from
# `experiments/step_law.py --setting quickstart` (N = 3k-99k at the quickstart's own D,
# 1.5e5-1.6e6, context 128; measured 2026-11-30), fitted by PowerLaw.fit(..., axes=("N",))
# without the vertex SEs (single-run basins are noisier than their parabola SEs say). With D
# free the same points give D^-0.06±0.21 (90%): no D dependence at this scale, and Step Law's
# D^0.307 outside the interval. The quickstart's default rule (docs/hyperparameters.md).
LR_BYTE_SMALL = PowerLaw(
    coef=8.64789,
    exp_N=-0.701555,
    interval=LogCov(
        (
            (0.23487, -0.0549035, 0.0, 0.0),
            (-0.0549035, 0.0130331, 0.0, 0.0),
            (0.0, 0.0, 0.0, 0.0),
            (0.0, 0.0, 0.0, 0.0),
        )
    ),
    domain=Domain(N=(3120.0, 98624.0), D=(76800.0, 1614848.0), B=(512.0, 512.0)),
    source="experiments/lr.py tiny + step_law.py quickstart",
)
