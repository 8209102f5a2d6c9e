"""Loss-vs-compute frontiers and compute-optimal model sizes from a results directory.

Two estimates, both under one FLOP convention:
- the lower envelope of every run's loss-vs-compute curve (Kaplan et al. 2020 §6, L(C_min)),
  built from held-out eval_loss points by default (train loss, EMA-smoothed, on request); note
  that intermediate points of a cosine-scheduled run sit above what a run sized for that
  compute would reach (Hoffmann et al. 2022 §2), so the envelope is an upper bound on L(C);
- isoFLOP profiles (Hoffmann et al. 2022 approach 2): per budget, the best run and a parabola
  fitted to loss vs log10 N whose vertex is N_opt(C), with a delta-method standard error from
  the fit's covariance; D_opt(C) is read off the profile's own log D vs log N line.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxscale.analysis import plotting
from jaxscale.core import flops
from jaxscale.runs import results as results_lib

DEFAULT_CONVENTION = "kaplan_attn"
_TAG = re.compile(r"C(\d\.\d+e[+-]\d+)")
# Optima columns printed by describe() (optima.csv has them all).
SHOWN_COLUMNS = [
    "budget",
    "n_runs",
    "best_N",
    "best_loss",
    "N_opt",
    "log10_N_opt_se",
    "D_opt",
    "tokens_per_param",
    "loss_opt",
    "interior",
]


def param_column(convention: str, params: str | None = None) -> str:
    """N that matches a convention: total params for 'chinchilla', non-embedding otherwise."""
    if params is None:
        params = "total" if convention == "chinchilla" else "nonembedding"
    if params not in ("total", "nonembedding"):
        raise ValueError(f"params must be 'total' or 'nonembedding', got {params!r}")
    return "n_params" if params == "total" else "n_params_nonembedding"


# --- envelope -------------------------------------------------------------------------------


def curve_points(
    curves_df: pd.DataFrame,
    convention: str = DEFAULT_CONVENTION,
    *,
    loss: str = "eval",
    smooth_halflife: float = 10.0,
) -> pd.DataFrame:
    """(run_id, step, C, loss) points: eval_loss where evaluated, or EMA-smoothed train loss."""

    if not len(curves_df):
        return pd.DataFrame(columns=["run_id", "step", "C", "loss"])
    C = results_lib.compute(curves_df, convention)
    if loss == "eval":
        y = curves_df["eval_loss"].astype(float)
    elif loss == "train":
        # An EMA per run (halflife in logged steps) so single noisy batches cannot set the envelope.
        y = curves_df.groupby("run_id", sort=False)["loss"].transform(
            lambda s: s.astype(float).ewm(halflife=smooth_halflife).mean()
        )
    else:
        raise ValueError(f"loss must be 'eval' or 'train', got {loss!r}")
    pts = pd.DataFrame(
        {"run_id": curves_df["run_id"], "step": curves_df["step"], "C": C, "loss": y}
    )
    ok = np.isfinite(pts["C"]) & np.isfinite(pts["loss"]) & (pts["C"] > 0)
    return pts[ok].reset_index(drop=True)


def envelope(points: pd.DataFrame) -> pd.DataFrame:
    """Lower envelope (Pareto front) of loss vs compute: points no other point beats on both.

    Kaplan et al. 2020 §6.1: L(C_min) is the minimum loss reached by any run at compute ≤ C.
    """
    if not len(points):
        return points.copy()
    p = points.sort_values(["C", "loss"], kind="mergesort")
    prev_best = p["loss"].cummin().shift(fill_value=np.inf)
    return p[p["loss"] < prev_best].reset_index(drop=True)


# --- isoFLOP profiles ---------------------------------------------------------------------------


def isoflop_groups(
    runs_df: pd.DataFrame, convention: str = DEFAULT_CONVENTION, *, rtol: float = 0.1
) -> dict[float, pd.DataFrame]:
    """Finished runs grouped by compute budget.

    Runs made by grids.isoflop_plan carry their budget in the name (C1.000e+12); other runs are
    clustered by their compute C, a new group starting where C jumps by more than rtol.
    """

    if not len(runs_df):
        return {}
    df = runs_df[runs_df["status"] == "done"].copy()
    df = df[np.isfinite(df["loss"].astype(float))]
    if not len(df):
        return {}
    df["C"] = results_lib.compute(df, convention)
    tags = df["name"].astype(str).str.extract(_TAG)[0].astype(float)
    df["budget"] = tags
    untagged = df[tags.isna()].sort_values("C")
    if len(untagged):
        logc = np.log(untagged["C"].to_numpy())
        starts = np.r_[True, np.diff(logc) > math.log1p(rtol)]
        gid = np.cumsum(starts)
        budgets = (
            pd.Series(untagged["C"].to_numpy())
            .groupby(gid)
            .transform(lambda s: float(np.exp(np.log(s).mean())))
        )
        df.loc[untagged.index, "budget"] = budgets.to_numpy()
    return {float(b): g.drop(columns="budget") for b, g in df.groupby("budget", sort=True)}


@dataclass(frozen=True)
class Parabola:
    """loss = a·u² + b·u + c with u = log10 N - x0, plus the fit's covariance."""

    a: float
    b: float
    c: float
    x0: float
    cov: np.ndarray
    dof: int

    @property
    def vertex(self) -> float:
        """log10 N at the minimum (NaN if the parabola opens downward)."""
        return self.x0 - self.b / (2 * self.a) if self.a > 0 else math.nan

    @property
    def vertex_se(self) -> float:
        """Delta-method SE of the vertex: g = ∂(-b/2a)/∂(a, b) = (b/2a², -1/2a)."""
        if not self.a > 0 or self.dof < 1:
            return math.nan
        g = np.array([self.b / (2 * self.a**2), -1 / (2 * self.a), 0.0])
        return float(math.sqrt(max(g @ self.cov @ g, 0.0)))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        u = np.asarray(x, float) - self.x0
        return self.a * u**2 + self.b * u + self.c


def fit_parabola(x: np.ndarray, y: np.ndarray) -> Parabola:
    """Least-squares parabola in x (centred for conditioning); covariance s²(XᵀX)⁻¹."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or len(np.unique(x)) < 3:
        raise ValueError(f"a parabola needs 3 distinct sizes, got {len(np.unique(x))}")
    x0 = float(x.mean())
    X = np.stack([(x - x0) ** 2, x - x0, np.ones_like(x)], axis=1)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    dof = len(x) - 3
    resid = y - X @ beta
    s2 = float(resid @ resid / dof) if dof > 0 else math.nan
    cov = s2 * np.linalg.inv(X.T @ X)
    return Parabola(float(beta[0]), float(beta[1]), float(beta[2]), x0, cov, dof)


def isoflop_optima(
    runs_df: pd.DataFrame,
    convention: str = DEFAULT_CONVENTION,
    *,
    params: str | None = None,
    rtol: float = 0.1,
) -> tuple[pd.DataFrame, dict[float, Parabola]]:
    """Per budget: best run, parabola vertex N_opt ± SE (log10), D_opt, tokens per parameter."""

    ncol = param_column(convention, params)
    rows, fits = [], {}
    for budget, g in isoflop_groups(runs_df, convention, rtol=rtol).items():
        g = g.sort_values(ncol)
        logN = np.log10(g[ncol].astype(float).to_numpy())
        logD = np.log10(g["tokens"].astype(float).to_numpy())
        loss = g["loss"].astype(float).to_numpy()
        best = g.iloc[int(np.argmin(loss))]
        row: dict[str, Any] = {
            "budget": budget,
            "C": float(g["C"].mean()),
            "n_runs": len(g),
            "best_run_id": best["run_id"],
            "best_N": float(best[ncol]),
            "best_D": float(best["tokens"]),
            "best_loss": float(best["loss"]),
            "N_min": float(10 ** logN.min()),
            "N_max": float(10 ** logN.max()),
        }
        vx = se = loss_opt = math.nan
        interior = False
        if len(np.unique(logN)) >= 3:
            fit = fit_parabola(logN, loss)
            fits[budget] = fit
            vx, se = fit.vertex, fit.vertex_se
            if math.isnan(vx):
                warnings.warn(
                    f"isoFLOP profile at C={budget:.3e}: loss is not convex in log N "
                    "(parabola opens downward); no vertex",
                    stacklevel=2,
                )
            else:
                loss_opt = float(fit(vx))
                interior = bool(logN.min() <= vx <= logN.max())
                if not interior:
                    warnings.warn(
                        f"isoFLOP profile at C={budget:.3e}: vertex N={10**vx:.3g} lies outside "
                        f"the sizes trained ({10 ** logN.min():.3g}–{10 ** logN.max():.3g}); "
                        "it is an extrapolation",
                        stacklevel=2,
                    )
        # D along the profile: log D is linear in log N (D = C / flops_per_token(N)).
        slope, icpt = np.polyfit(logN, logD, 1) if len(np.unique(logN)) >= 2 else (math.nan,) * 2
        logD_opt = icpt + slope * vx
        se_D = abs(slope) * se
        row.update(
            {
                "log10_N_opt": vx,
                "log10_N_opt_se": se,
                "N_opt": 10**vx,
                "N_opt_lo": 10 ** (vx - se),
                "N_opt_hi": 10 ** (vx + se),
                "log10_D_opt": logD_opt,
                "log10_D_opt_se": se_D,
                "D_opt": 10**logD_opt,
                "D_opt_lo": 10 ** (logD_opt - se_D),
                "D_opt_hi": 10 ** (logD_opt + se_D),
                "loss_opt": loss_opt,
                "tokens_per_param": 10 ** (logD_opt - vx),
                "curvature": fits[budget].a if budget in fits else math.nan,
                "interior": interior,
            }
        )
        rows.append(row)
    return pd.DataFrame(rows), fits


def power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(exponent, prefactor) of y = k·x^e by least squares in log-log (Hoffmann 2022 eq. 4)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2:
        return math.nan, math.nan
    e, logk = np.polyfit(np.log10(x[ok]), np.log10(y[ok]), 1)
    return float(e), float(10**logk)


# --- the whole analysis -----------------------------------------------------------------------


@dataclass(frozen=True)
class Frontier:
    """Everything `jaxscale frontier` computes: envelope points and isoFLOP optima."""

    convention: str
    loss: str
    params: str
    points: pd.DataFrame
    envelope: pd.DataFrame
    optima: pd.DataFrame
    fits: dict[float, Parabola]
    runs: pd.DataFrame

    def exponents(self) -> dict[str, float]:
        """N_opt ∝ C^a and D_opt ∝ C^b over budgets with an interior vertex (display only)."""
        if not len(self.optima):
            return {"a": math.nan, "b": math.nan}
        o = self.optima[self.optima["interior"]]
        return {"a": power_law(o["C"], o["N_opt"])[0], "b": power_law(o["C"], o["D_opt"])[0]}

    def table(self) -> pd.DataFrame:
        """isoFLOP optima, one row per compute budget."""
        return self.optima

    def describe(self) -> str:
        """Run and envelope counts, the optima table and the fitted allocation exponents."""
        lines = [
            f"{len(self.runs)} runs, {len(self.points)} {self.loss}-loss points, "
            f"{len(self.envelope)} on the envelope (C in {self.convention} FLOPs, "
            f"N = {self.params})"
        ]
        if not len(self.optima):
            lines.append("no isoFLOP profiles (need >= 3 finished sizes at a budget)")
            return "\n".join(lines)
        with pd.option_context("display.width", 160, "display.float_format", "{:.4g}".format):
            lines.append(self.optima[SHOWN_COLUMNS].to_string(index=False))
        ex = self.exponents()
        lines.append(
            f"N_opt ∝ C^{ex['a']:.3f}, D_opt ∝ C^{ex['b']:.3f} (least squares over interior "
            "vertices; use `jaxscale fit` for intervals)"
        )
        return "\n".join(lines)

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write envelope.csv, optima.csv, frontier.json and the three plots (PNG + SVG)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.envelope.to_csv(out / "envelope.csv", index=False)
        self.optima.to_csv(out / "optima.csv", index=False)
        meta = {
            "convention": self.convention,
            "loss": "eval_loss" if self.loss == "eval" else "train loss (EMA-smoothed)",
            "params": self.params,
            "exponents": self.exponents(),
            "optima": json.loads(self.optima.to_json(orient="records")),
        }
        (out / "frontier.json").write_text(json.dumps(meta, indent=2))
        written = [out / "envelope.csv", out / "optima.csv", out / "frontier.json"]
        return written + self.plot(out)

    def plot(self, out_dir: str | Path) -> list[Path]:
        """loss_vs_compute, isoflop and optima figures as PNG and SVG."""
        return _plot(self, Path(out_dir))


def analyse(
    path_or_dfs: Any,
    convention: str = DEFAULT_CONVENTION,
    *,
    loss: str = "eval",
    params: str | None = None,
) -> Frontier:
    """Envelope and isoFLOP optima for a results directory or a (runs_df, curves_df) pair."""

    flops.check_convention(convention)
    if isinstance(path_or_dfs, tuple):
        runs_df, curves_df = path_or_dfs
    else:
        runs_df, curves_df = results_lib.load(path_or_dfs)
    points = curve_points(curves_df, convention, loss=loss)
    optima, fits = isoflop_optima(runs_df, convention, params=params)
    return Frontier(
        convention=convention,
        loss=loss,
        params=param_column(convention, params),
        points=points,
        envelope=envelope(points),
        optima=optima,
        fits=fits,
        runs=runs_df,
    )


def _plot(fr: Frontier, out: Path) -> list[Path]:
    plt = plotting.pyplot()
    import matplotlib  # lazy, like pyplot: colour norms and tick formatters

    written: list[Path] = []
    ncol = fr.params
    sizes = fr.runs.set_index("run_id")[ncol] if len(fr.runs) else pd.Series(dtype=float)
    lognorm = matplotlib.colors.LogNorm(
        vmin=max(float(sizes.min()), 1.0) if len(sizes) else 1,
        vmax=float(sizes.max()) + 1 if len(sizes) else 10,
    )
    cmap = plt.get_cmap("viridis")
    ylabel = "eval loss" if fr.loss == "eval" else "train loss (EMA)"
    xlabel = f"training compute C [FLOPs, {fr.convention}]"

    def done(fig: Any, name: str) -> None:
        # Minor log-tick labels crowd these small panels; the loss axis reads better in decimals.
        for a in fig.axes[:1] if name != "optima" else []:
            for axis in (a.xaxis, a.yaxis):
                if axis.get_scale() == "log":
                    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            if a.get_yscale() == "log" and name == "loss_vs_compute":
                a.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
                a.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
        written.extend(plotting.save_figure(fig, out / name))

    # 1. every curve and the envelope (Kaplan 2020 Fig. 1 middle)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rid, g in fr.points.groupby("run_id"):
        ax.plot(g["C"], g["loss"], lw=0.8, alpha=0.6, color=cmap(lognorm(sizes.get(rid, 1.0))))
    if len(fr.envelope):
        ax.step(
            fr.envelope["C"],
            fr.envelope["loss"],
            where="post",
            color="k",
            lw=2,
            label="lower envelope L(C)",
        )
        ax.legend()
    ax.set(
        xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title="Loss vs compute, all runs"
    )
    sm = matplotlib.cm.ScalarMappable(norm=lognorm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label=f"N ({ncol})")
    done(fig, "loss_vs_compute")

    # 2. isoFLOP profiles with parabola vertices (Hoffmann 2022 Fig. 3 left)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = isoflop_groups(fr.runs, fr.convention)
    bnorm = matplotlib.colors.LogNorm(
        vmin=min(groups, default=1), vmax=max(groups, default=10) * 1.01
    )
    bcmap = plt.get_cmap("plasma")
    for budget, g in groups.items():
        col = bcmap(bnorm(budget) * 0.85)
        N = g[ncol].astype(float)
        ax.scatter(N, g["loss"], color=col, s=18, label=f"C={budget:.2e}")
        fit = fr.fits.get(budget)
        if fit is not None:
            xs = np.linspace(np.log10(N.min()) - 0.15, np.log10(N.max()) + 0.15, 100)
            ax.plot(10**xs, fit(xs), color=col, lw=1)
            lo, hi = np.log10(N.min()), np.log10(N.max())
            # A vertex far outside the sampled sizes says only "further that way": drawing it
            # would squash every profile, so only vertices within half a decade are shown.
            if math.isfinite(fit.vertex) and lo - 0.5 <= fit.vertex <= hi + 0.5:
                se = fit.vertex_se if math.isfinite(fit.vertex_se) else 0.0
                se = min(se, 0.5)
                ax.errorbar(
                    [10**fit.vertex],
                    [fit(fit.vertex)],
                    xerr=[
                        [10**fit.vertex - 10 ** (fit.vertex - se)],
                        [10 ** (fit.vertex + se) - 10**fit.vertex],
                    ],
                    fmt="D",
                    color=col,
                    mfc=col if lo <= fit.vertex <= hi else "white",
                    mec="k",
                    ms=6,
                    capsize=3,
                )
    ax.set(
        xscale="log",
        xlabel=f"N ({ncol})",
        ylabel="final eval loss",
        title="isoFLOP profiles; ◆ = parabola vertex ± 1 SE (hollow: extrapolated)",
    )
    if groups:
        ax.legend(fontsize=8)
    done(fig, "isoflop")

    # 3. N_opt(C), D_opt(C) (Hoffmann 2022 Fig. 3 middle/right)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    o = fr.optima
    ex = fr.exponents()
    for ax, key, label, e in ((axes[0], "N", "N_opt", ex["a"]), (axes[1], "D", "D_opt", ex["b"])):
        if len(o):
            # vertices more than half a decade outside the sampled sizes are not shown
            near = o["log10_N_opt"].between(np.log10(o["N_min"]) - 0.5, np.log10(o["N_max"]) + 0.5)
            for sub, filled in ((o[near & o["interior"]], True), (o[near & ~o["interior"]], False)):
                if not len(sub):
                    continue
                v = sub[f"{key}_opt"]
                ax.errorbar(
                    sub["C"],
                    v,
                    yerr=[v - sub[f"{key}_opt_lo"], sub[f"{key}_opt_hi"] - v],
                    fmt="o",
                    color="C0",
                    mfc="C0" if filled else "white",
                    capsize=3,
                    label="parabola vertex ± 1 SE" + ("" if filled else " (extrapolated)"),
                )
            ax.scatter(
                o["C"], o[f"best_{key}"], facecolors="none", edgecolors="C1", label="best run"
            )
            if math.isfinite(e):
                _, k = power_law(o[o["interior"]]["C"], o[o["interior"]][f"{key}_opt"])
                cs = np.geomspace(o["C"].min(), o["C"].max(), 20)
                ax.plot(cs, k * cs**e, "k--", lw=1, label=f"∝ C^{e:.2f}")
            ax.legend(fontsize=8)
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=label)
    axes[0].set_title("compute-optimal model size")
    axes[1].set_title("compute-optimal tokens")
    done(fig, "optima")
    return written
