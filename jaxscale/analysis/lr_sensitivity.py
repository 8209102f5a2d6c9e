"""Learning-rate sensitivity: loss vs peak LR per model size, fitted optimum and its drift.

Kaplan et al. 2020 App. D.6 (Fig. 22): with warmup and decay, the final loss is insensitive to
the peak LR over a broad range as long as the LR is not too small; the best LR shrinks slowly
with N (their eq. D.1: LR(N) ≈ 0.003239 - 0.0001395 log N). For each (N, batch size) group of
a sweep we fit a parabola to final loss vs log10 LR over the basin around the best grid point
(the optimum's vertex, with a delta-method standard error), report the basin width — the
range of LR whose fitted loss is within `tol` (relative) of the optimum — and fit the optimum's
drift as a power law in N (and in B where a size was run at several batch sizes). A vertex
outside the LRs its parabola was fitted on is an extrapolation: it is flagged EXTRAPOLATED in
the output and left out of the drift.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxscale.analysis import plotting
from jaxscale.analysis.isoflop import LEVEL, Parabola, fit_parabola
from jaxscale.runs import results as results_lib
from jaxscale.runs import store

Z90 = 1.6448536269514722  # standard normal 95% quantile: a two-sided 90% interval


@dataclass(frozen=True)
class LRFit(Parabola):
    """Parabola loss = a u² + b u + c, u = log10 LR - x0, on the basin points of one group;
    vertex and its delta-method SE come from isoflop.Parabola."""

    lo: float  # fitted range of log10 LR
    hi: float

    @property
    def min_loss(self) -> float:
        return float(self(self.vertex)) if self.a > 0 else math.nan

    @property
    def extrapolated(self) -> bool:
        """True when the vertex lies outside the LRs the parabola was fitted on: the optimum is
        then the parabola's extrapolation, not an interpolation between runs."""
        return math.isfinite(self.vertex) and not self.lo <= self.vertex <= self.hi

    def width(self, tol: float) -> float:
        """Decades of LR over which the fitted loss is within (1+tol)·min (basin width)."""
        ok = self.a > 0 and self.min_loss > 0
        return 2 * math.sqrt(tol * self.min_loss / self.a) if ok else math.nan


def fit_lr_parabola(lr: Sequence[float], loss: Sequence[float], half_window: int = 2) -> LRFit:
    """Least-squares parabola in log10 LR over the best grid point ± half_window neighbours;
    repeated LRs (seeds) all enter the fit, the window and best point counted in distinct LRs."""
    x = np.log10(np.asarray(lr, float))
    y = np.asarray(loss, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    grid_G, inv = np.unique(x, return_inverse=True)
    if grid_G.size < 3:
        raise ValueError(f"an LR optimum needs >= 3 distinct finite LRs, got {grid_G.size}")
    # The best grid point by its mean over repeats, so one lucky seed does not pick the window.
    mean_G = np.bincount(inv, weights=y) / np.bincount(inv)
    i = int(np.argmin(mean_G))
    G = grid_G.size
    for hw in range(half_window, G):
        lo, hi = max(0, i - hw), min(G, i + hw + 1)
        # Keep at least 3 points even when the best LR sits at the edge of the grid.
        while hi - lo < 3:
            lo, hi = (lo - 1, hi) if lo > 0 else (lo, hi + 1)
        sel = (inv >= lo) & (inv < hi)
        f = _parabola(x[sel], y[sel])
        # A flat basin can bend the wrong way within noise: widen the window until it curves up.
        if f.a > 0 or (lo == 0 and hi == G):
            return f
    return f


def _parabola(xs: np.ndarray, ys: np.ndarray) -> LRFit:
    p = fit_parabola(xs, ys)
    return LRFit(**vars(p), lo=float(xs.min()), hi=float(xs.max()))


def _wls_slope(x: np.ndarray, y: np.ndarray, se: np.ndarray) -> tuple[float, float, float]:
    """(slope, slope_se, intercept) of y on x weighted by 1/se² (unit weights if se unknown)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, se = x[ok], y[ok], se[ok]
    if x.size < 2 or np.unique(x).size < 2:
        return math.nan, math.nan, math.nan
    w = 1 / se**2 if np.all(np.isfinite(se) & (se > 0)) else np.ones_like(x)
    X = np.stack([np.ones_like(x), x], 1)
    W = np.diag(w)
    A = X.T @ W @ X
    beta = np.linalg.solve(A, X.T @ W @ y)
    r = y - X @ beta
    dof = x.size - 2
    # Scale by the reduced chi² when there are spare points, so scatter beyond the SEs shows.
    scale = max(float(r @ W @ r) / dof, 1.0) if dof > 0 else 1.0
    slope_se = math.sqrt(np.linalg.inv(A)[1, 1] * scale)
    return float(beta[1]), slope_se, float(beta[0])


@dataclass(frozen=True)
class LRStudy:
    """Per-(N, B) optima and their drift with N and B."""

    points: pd.DataFrame  # N, B, lr, loss, diverged, group
    optima: (
        pd.DataFrame
    )  # N, B, lr_opt [lr_lo90, lr_hi90], log10_lr_opt(_se), loss_opt, width, edge
    fits: dict[tuple[int, int], LRFit]
    drift_N: dict[str, float]
    drift_B: dict[str, float]
    tol: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "tol": self.tol,
            "optima": json.loads(self.optima.to_json(orient="records")),
            "drift_N": self.drift_N,
            "drift_B": self.drift_B,
            "points": json.loads(self.points.to_json(orient="records")),
        }

    def table(self) -> pd.DataFrame:
        """Fitted optimum, its SE and the basin width per (N, B) group."""
        return self.optima

    def describe(self) -> str:
        """Readable summary: optimum per group, basin widths and drift."""
        return _describe(self)

    def plot(self, out_dir: str | Path) -> list[Path]:
        """Loss vs LR per (N, B) with parabolas and optima; LR_opt vs N (and B): lr.png/.svg."""
        return _plot(self, Path(out_dir))

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write lr.json (every number), lr_optima.csv and the plot."""
        out = Path(out_dir)
        store.write_json_atomic(out / "lr.json", self.to_dict())
        self.optima.to_csv(out / "lr_optima.csv", index=False)
        return [out / "lr.json", out / "lr_optima.csv", *self.plot(out)]


def analyse_points(points: pd.DataFrame, *, tol: float = 0.01, half_window: int = 2) -> LRStudy:
    """LR study from a table with columns N, B, lr, loss (NaN/inf loss = diverged)."""
    need = {"N", "B", "lr", "loss"}
    if not need <= set(points.columns):
        raise ValueError(f"LR points need columns {sorted(need)}, have {list(points.columns)}")
    pts = points.copy()
    pts["diverged"] = ~np.isfinite(pts["loss"].astype(float))
    rows, fits = [], {}
    for (N, B), g in pts.groupby(["N", "B"], sort=True):
        g = g[~g["diverged"]]
        if g["lr"].nunique() < 3:
            continue
        f = fit_lr_parabola(g["lr"], g["loss"], half_window)
        fits[(int(N), int(B))] = f
        best = g.loc[g["loss"].idxmin()]
        xs = np.log10(g["lr"].to_numpy(float))
        # Not bracketed: the best LR is at the grid's end, or the vertex lies outside the grid.
        edge = bool(best["lr"] in (g["lr"].min(), g["lr"].max())) or not (
            xs.min() <= f.vertex <= xs.max()
        )
        within = g[g["loss"] <= (1 + tol) * best["loss"]]
        lo, hi = f.vertex_interval(LEVEL)
        rows.append(
            {
                "N": int(N),
                "B": int(B),
                "n_lrs": int(g["lr"].nunique()),
                "best_lr": float(best["lr"]),
                "best_loss": float(best["loss"]),
                "log10_lr_opt": f.vertex,
                "log10_lr_opt_se": f.vertex_se,
                "lr_opt": 10**f.vertex if abs(f.vertex) < 30 else math.nan,
                # Student-t on the window's residual dof (isoflop.Parabola.vertex_interval).
                "lr_lo90": 10**lo if abs(lo) < 30 else math.nan,
                "lr_hi90": 10**hi if abs(hi) < 30 else math.nan,
                "loss_opt": f.min_loss,
                "width_decades": f.width(tol),
                "observed_width_decades": float(np.log10(within["lr"].max() / within["lr"].min())),
                "grid_decades": float(xs.max() - xs.min()),
                "edge": edge,
                "extrapolated": f.extrapolated,
                "fit_lo": f.lo,
                "fit_hi": f.hi,
            }
        )
    if not rows:
        raise ValueError("no (N, batch size) group has >= 3 finished learning rates to fit")
    opt = pd.DataFrame(rows)
    # An extrapolated vertex only says "that way": it is flagged and kept out of the drift.
    interior = opt[~opt["edge"] & ~opt["extrapolated"] & np.isfinite(opt["log10_lr_opt"])]
    B_ref = int(opt["B"].mode().iloc[0])
    ref = interior[interior["B"] == B_ref]
    s, se, c = _wls_slope(
        np.log10(ref["N"].to_numpy(float)),
        ref["log10_lr_opt"].to_numpy(float),
        ref["log10_lr_opt_se"].to_numpy(float),
    )
    drift_N = {
        "batch_size": B_ref,
        "exponent": s,
        "exponent_se": se,
        "log10_coef": c,
        "n_sizes": int(len(ref)),
    }
    bs, bse, ns = [], [], 0
    for _N, g in interior.groupby("N"):
        if g["B"].nunique() >= 2:
            sb, sbe, _ = _wls_slope(
                np.log10(g["B"].to_numpy(float)),
                g["log10_lr_opt"].to_numpy(float),
                g["log10_lr_opt_se"].to_numpy(float),
            )
            bs.append(sb)
            bse.append(sbe)
            ns += 1
    drift_B = {
        "exponent": float(np.mean(bs)) if bs else math.nan,
        "exponent_se": float(np.sqrt(np.sum(np.square(bse))) / len(bse)) if bse else math.nan,
        "n_sizes": ns,
    }
    return LRStudy(pts, opt, fits, drift_N, drift_B, tol)


def analyse(
    results: str | Path | tuple[pd.DataFrame, pd.DataFrame],
    *,
    tol: float = 0.01,
    half_window: int = 2,
) -> LRStudy:
    """LR study of the runs of a results directory or (runs_df, curves_df): final eval loss vs
    train.lr."""

    runs, _ = results if isinstance(results, tuple) else results_lib.load(results)
    if not len(runs) or "train.lr" not in runs:
        raise ValueError(f"no runs with a train.lr under {results}")
    runs = runs[runs["status"].isin(["done", "diverged"])]
    loss = runs["loss"].astype(float).where(runs["status"] != "diverged", np.inf)
    pts = pd.DataFrame(
        {
            "N": runs["n_params_nonembedding"].astype(int),
            "B": runs["train.batch_size"].astype(int),
            "lr": runs["train.lr"].astype(float),
            "loss": loss,
            "run_id": runs["run_id"],
        }
    )
    return analyse_points(pts, tol=tol, half_window=half_window)


def _plot(study: LRStudy, out: Path) -> list[Path]:
    plt = plotting.pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    opt, pts = study.optima, study.points
    Ns = sorted(opt["N"].unique())
    cmap = plt.get_cmap("viridis")
    Bs = sorted(opt["B"].unique())
    styles = ["-", "--", ":", "-."]
    finite = pts[~pts["diverged"]]
    ytop = float(finite["loss"].quantile(0.9)) if len(finite) else 1.0
    for (N, B), f in study.fits.items():
        c = cmap(Ns.index(N) / max(len(Ns) - 1, 1))
        ls = styles[Bs.index(B) % len(styles)]
        g = pts[(pts["N"] == N) & (pts["B"] == B)].sort_values("lr")
        gf = g[~g["diverged"]]
        ax.plot(gf["lr"], gf["loss"], "o", ms=4, color=c)
        gd = g[g["diverged"]]
        ax.plot(gd["lr"], np.full(len(gd), ytop), "x", color=c)
        xs = np.linspace(f.lo, f.hi, 50)
        ax.plot(10**xs, f(xs), ls, color=c, lw=1, label=f"N={N:.3g} B={B}")
        if _shown(f):
            lo, hi = _clipped_interval(f)
            ax.errorbar(
                [10**f.vertex],
                [f.min_loss],
                xerr=[[10**f.vertex - 10**lo], [10**hi - 10**f.vertex]],
                fmt="*",
                ms=9,
                color=c,
            )
    ax.set(
        xscale="log",
        xlabel="peak learning rate",
        ylabel="final eval loss [nats/token]",
        title=f"loss vs LR (★ fitted optimum, {LEVEL:.0%} interval within the LRs fitted; "
        "× diverged)",
    )
    ax.legend(fontsize=7)
    for j, B in enumerate(Bs):
        o = opt[(opt["B"] == B) & np.isfinite(opt["log10_lr_opt"])]
        fs = [study.fits[(int(n), int(B))] for n in o["N"]]
        o = o[[_shown(f) for f in fs]]
        iv = np.array([_clipped_interval(f) for f in fs if _shown(f)]).reshape(-1, 2).T
        bx.errorbar(
            o["N"],
            o["lr_opt"],
            yerr=[o["lr_opt"] - 10 ** iv[0], 10 ** iv[1] - o["lr_opt"]],
            fmt="os^v"[j % 4],
            color=f"C{j}",
            label=f"B={B}",
            capsize=3,
        )
    d = study.drift_N
    if math.isfinite(d["exponent"]):
        ns = np.geomspace(min(Ns), max(Ns), 20)
        bx.plot(
            ns,
            10 ** (d["log10_coef"] + d["exponent"] * np.log10(ns)),
            "k--",
            lw=1,
            # 90% like every interval the kit draws: ±1.645 SE of the weighted slope.
            label=f"LR* ∝ N^{d['exponent']:.2f} [{d['exponent'] - Z90 * d['exponent_se']:.2f}, "
            f"{d['exponent'] + Z90 * d['exponent_se']:.2f}] (90%)",
        )
    bx.set(
        xscale="log",
        yscale="log",
        xlabel="non-embedding parameters N",
        ylabel="optimal peak LR",
        title="drift of the optimum",
    )
    bx.legend(fontsize=7)
    fig.tight_layout()
    return plotting.save_figure(fig, out / "lr")


def _shown(f: LRFit) -> bool:
    """A vertex within half a decade of the LRs fitted: farther ones only say 'that way'."""
    return math.isfinite(f.vertex) and f.lo - 0.5 <= f.vertex <= f.hi + 0.5


def _clipped_interval(f: LRFit) -> tuple[float, float]:
    """The vertex's 90% interval cut to the LRs fitted (an undefined side drawn as the whole
    range), so one ill-determined optimum cannot stretch the axes over many decades."""
    a, b = f.vertex_interval(LEVEL)
    a = max(a, f.lo) if math.isfinite(a) else f.lo
    b = min(b, f.hi) if math.isfinite(b) else f.hi
    return min(a, f.vertex), max(b, f.vertex)


def extrapolated_warning(r: Any, what: str = "LR") -> str:
    """The warning for an optimum row whose vertex lies outside the values its parabola used."""
    return (
        f"EXTRAPOLATED: vertex {10 ** r['log10_lr_opt']:.3g} outside the {what}s its parabola "
        f"used ({10 ** r['fit_lo']:.3g}..{10 ** r['fit_hi']:.3g}); left out of the drift"
    )


def _drift_line(what: str, d: dict[str, float], where: str) -> str:
    """One drift exponent with its 90% interval, or why there is none."""
    if not math.isfinite(d["exponent"]):
        return (
            f"Drift with {what} ({where}): not measured — it needs >= 2 bracketed optima "
            f"along {what}; run more {'sizes' if what == 'N' else 'batch sizes'} or extend "
            "the grid"
        )
    n = d["n_sizes"]
    e, se = d["exponent"], d["exponent_se"]
    line = (
        f"Drift with {what} ({where}): LR* ∝ {what}^{e:.3f} "
        f"[90%: {e - Z90 * se:.3f}, {e + Z90 * se:.3f}] (SE {se:.3f})"
    )
    if what == "N" and n == 2:
        line += "  [from 2 sizes: the power-law form is assumed, not checked]"
    return line


def _describe(study: LRStudy) -> str:
    lines = [
        f"LR sensitivity (parabola in log10 LR over the best grid point ± neighbours; "
        f"{100 * LEVEL:g}% delta-method intervals; basin = fitted loss within "
        f"{100 * study.tol:g}% of the optimum):"
    ]
    for _, r in study.optima.iterrows():
        lo, hi = r["lr_lo90"], r["lr_hi90"]
        iv = f"[90%: {lo:.3g}, {hi:.3g}]" if math.isfinite(lo) else "[90%: undefined]"
        lines.append(
            f"  N={r['N']:>9,} B={r['B']:>4}: LR*={r['lr_opt']:.3g} {iv}, "
            f"loss {r['loss_opt']:.4f}; basin {r['width_decades']:.2f} decades "
            f"(observed >= {r['observed_width_decades']:.2f} "
            f"of a {r['grid_decades']:.2f}-decade grid)"
            + ("  [best LR at grid edge]" if r["edge"] else "")
            + (f"  [{extrapolated_warning(r)}]" if r["extrapolated"] else "")
        )
    d, b = study.drift_N, study.drift_B
    lines.append(_drift_line("N", d, f"B={d['batch_size']}, {d['n_sizes']} size(s)"))
    if b["n_sizes"]:
        lines.append(_drift_line("B", b, f"{b['n_sizes']} size(s), mean of their slopes"))
    return "\n".join(lines)
