"""LR transfer: does one peak LR serve every shape of a width or depth sweep?

μP (Yang et al. 2022, "Tensor Programs V", Fig. 1) and CompleteP (Dey et al. 2025, Fig. 1)
claim the best LR stays put across widths (depths) while under the standard parameterisation
it moves. The check follows their figures: per shape, the optimum of the seed-mean final loss
over a ×2 LR grid (the vertex of lr_sensitivity's parabola in log LR), and the spread of those
optima in grid steps. A basin is flat to within seed noise over several grid points, so the
vertex moves with the seeds: the spread is recomputed leaving out each seed in turn, and a
verdict the subsets disagree with is marked not robust.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxscale.analysis import plotting
from jaxscale.analysis.isoflop import LEVEL
from jaxscale.analysis.lr_sensitivity import LRFit, fit_lr_parabola
from jaxscale.runs import results as results_lib
from jaxscale.runs import store


@dataclass(frozen=True)
class Transfer:
    """Per-shape LR optima, their spread in grid steps, and its leave-one-seed-out range."""

    optima: pd.DataFrame  # shape, lr_opt, log10_lr_opt, lo90, hi90, step, argmin_step, bracketed
    step_decades: float  # one grid step in log10 LR
    spread: float  # max - min optimum, grid steps (NaN when some shape is unbracketed)
    drift: float  # last shape's optimum - first shape's, grid steps
    loo: pd.DataFrame  # left_out seed, spread, drift (NaN: a shape unbracketed without it)
    tol_steps: float
    verdict: str  # "transfers", "drifts" or "unbracketed" (no verdict)
    warnings: list[str] = field(default_factory=list)
    points: pd.DataFrame = field(default_factory=pd.DataFrame)  # shape, lr, seed, loss

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "spread_steps": self.spread,
            "drift_steps": self.drift,
            "tol_steps": self.tol_steps,
            "step_decades": self.step_decades,
            "interval_level": LEVEL,
            "warnings": self.warnings,
            "optima": json.loads(self.optima.to_json(orient="records")),
            "leave_one_seed_out": json.loads(self.loo.to_json(orient="records")),
        }

    def describe(self) -> str:
        """Readable summary: each shape's optimum with its interval, the spread and the verdict."""
        return _describe(self)

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write transfer.json (every number) and transfer.png/.svg."""
        out = Path(out_dir)
        store.write_json_atomic(out / "transfer.json", self.to_dict())
        return [out / "transfer.json", *_plot(self, out)]


def _vertices(
    loss_SxGxR: np.ndarray, lr_G: np.ndarray, half_window: int, shapes: list
) -> list[LRFit]:
    """Each shape's parabola through every seed's loss (balanced, so its vertex is that of the
    seed means, with the seeds' scatter in its interval); an LR where any seed diverged is out."""
    R = loss_SxGxR.shape[2]
    fits = []
    for shape, loss_GxR in zip(shapes, loss_SxGxR, strict=True):
        ok_G = np.isfinite(loss_GxR).all(axis=1)
        if ok_G.sum() < 3:
            raise ValueError(
                f"shape {shape}: {int(ok_G.sum())} LR(s) trained without divergence in every "
                "seed; a transfer check needs >= 3: add smaller LRs"
            )
        lr = np.repeat(lr_G[ok_G], R)
        fits.append(fit_lr_parabola(lr, loss_GxR[ok_G].ravel(), half_window))
    return fits


def _bracketed(f: LRFit) -> bool:
    return f.a > 0 and f.lo <= f.vertex <= f.hi


def _spread_drift(fits: list[LRFit], x0: float, step: float) -> tuple[float, float]:
    if not all(_bracketed(f) for f in fits):
        return math.nan, math.nan
    v = [(f.vertex - x0) / step for f in fits]
    return max(v) - min(v), v[-1] - v[0]


def check(points: pd.DataFrame, *, tol_steps: float = 1.0, half_window: int = 2) -> Transfer:
    """Transfer check of a table with columns shape (in sweep order), lr, seed, loss (inf for a
    diverged run): every shape must have run the same LRs × seeds."""
    need = {"shape", "lr", "seed", "loss"}
    if not need <= set(points.columns):
        raise ValueError(
            f"transfer points need columns {sorted(need)}, have {list(points.columns)}"
        )
    if not tol_steps > 0:
        raise ValueError(f"tol_steps must be > 0, got {tol_steps}")
    shapes = list(dict.fromkeys(points["shape"]))
    if len(shapes) < 2:
        raise ValueError(f"a transfer check needs >= 2 shapes, got {len(shapes)}")
    cube = points.pivot_table(index=["shape", "lr"], columns="seed", values="loss", aggfunc="mean")
    lr_G = np.sort(points["lr"].unique().astype(float))
    seeds = list(cube.columns)
    full = pd.MultiIndex.from_product([shapes, lr_G], names=["shape", "lr"])
    cube = cube.reindex(full)
    if cube.isna().any().any():
        missing = cube[cube.isna().any(axis=1)].index[0]
        raise ValueError(
            f"shape {missing[0]} has no run at LR {missing[1]:.3g} for some seed: a transfer "
            "check compares seed means over one grid, so every shape needs every LR × seed"
        )
    loss_SxGxR = cube.to_numpy(float).reshape(len(shapes), lr_G.size, len(seeds))
    loss_SxGxR = np.where(np.isfinite(loss_SxGxR), loss_SxGxR, np.inf)
    x_G = np.log10(lr_G)
    step = float(np.median(np.diff(x_G)))
    x0 = float(x_G[0])
    fits = _vertices(loss_SxGxR, lr_G, half_window, shapes)
    rows = []
    for s, f, m in zip(shapes, fits, loss_SxGxR.mean(axis=2), strict=True):
        lo, hi = f.vertex_interval(LEVEL)
        rows.append(
            {
                "shape": s,
                "lr_opt": 10**f.vertex if abs(f.vertex) < 30 else math.nan,
                "log10_lr_opt": f.vertex,
                "lo90": 10**lo if math.isfinite(lo) else math.nan,
                "hi90": 10**hi if math.isfinite(hi) else math.nan,
                "step": (f.vertex - x0) / step,
                "argmin_step": int(np.argmin(m)),
                "loss_opt": f.min_loss,
                "bracketed": _bracketed(f),
                "fit_lo": 10**f.lo,
                "fit_hi": 10**f.hi,
            }
        )
    optima = pd.DataFrame(rows)
    spread, drift = _spread_drift(fits, x0, step)
    loo_rows = []
    if len(seeds) >= 2:
        for i, sd in enumerate(seeds):
            keep = [j for j in range(len(seeds)) if j != i]
            f_loo = _vertices(loss_SxGxR[:, :, keep], lr_G, half_window, shapes)
            sp, dr = _spread_drift(f_loo, x0, step)
            loo_rows.append({"left_out": sd, "spread": sp, "drift": dr})
    loo = pd.DataFrame(loo_rows, columns=["left_out", "spread", "drift"])
    warnings: list[str] = []
    if not optima["bracketed"].all():
        verdict = "unbracketed"
        for _, r in optima[~optima["bracketed"]].iterrows():
            way = "larger" if r["argmin_step"] == lr_G.size - 1 else "smaller"
            if r["argmin_step"] not in (0, lr_G.size - 1):
                way = "both ways"
            warnings.append(
                f"shape {r['shape']}: the optimum is not bracketed (the parabola over "
                f"{r['fit_lo']:.3g}..{r['fit_hi']:.3g} has no interior minimum); no verdict — "
                f"add LRs {way}, or seeds if the basin is flat"
            )
    else:
        verdict = "transfers" if spread <= tol_steps else "drifts"
        ok = loo["spread"].to_numpy(float)
        agree = (ok <= tol_steps) if verdict == "transfers" else (ok > tol_steps)
        if len(seeds) < 2:
            warnings.append(
                "one seed: no leave-one-seed-out check, and a flat basin's optimum moves with "
                "seed noise by up to a grid step; run >= 3 seeds"
            )
        elif not agree.all():
            bad = loo[~agree]
            nan = " (NaN: a shape unbracketed)" if bad["spread"].isna().any() else ""
            warnings.append(
                f"NOT ROBUST: leaving out seed(s) {', '.join(str(s) for s in bad['left_out'])} "
                f"gives a spread of {', '.join(f'{v:.2f}' for v in bad['spread'])} grid "
                f"steps{nan}; the basin is flat within seed noise — add seeds"
            )
    return Transfer(
        optima=optima,
        step_decades=step,
        spread=spread,
        drift=drift,
        loo=loo,
        tol_steps=tol_steps,
        verdict=verdict,
        warnings=warnings,
        points=points[["shape", "lr", "seed", "loss"]].copy(),
    )


def _describe(t: Transfer) -> str:
    lines = [
        f"LR transfer ({len(t.points['seed'].unique())} seed(s); optimum = vertex of a parabola "
        f"in log10 LR through every seed's final loss; grid step ×{10**t.step_decades:.3g}; "
        f"{100 * LEVEL:g}% delta-method intervals):"
    ]
    for _, r in t.optima.iterrows():
        where = (
            f"LR* {r['lr_opt']:.3g} [{r['lo90']:.3g}, {r['hi90']:.3g}] = grid step {r['step']:.2f}"
            if r["bracketed"]
            else "optimum NOT BRACKETED"
        )
        lines.append(f"  {r['shape']:>12}: {where} (best grid point {r['argmin_step']})")
    if t.verdict == "unbracketed":
        lines.append("Verdict: none — some optimum is not bracketed.")
    else:
        loo = t.loo["spread"].to_numpy(float)
        rng = (
            f"; leaving one seed out: {np.nanmin(loo):.2f}–{np.nanmax(loo):.2f}"
            if len(loo) and np.isfinite(loo).any()
            else ""
        )
        word = "TRANSFERS" if t.verdict == "transfers" else "DRIFTS"
        lines.append(
            f"Verdict: {word} — optima span {t.spread:.2f} grid steps (tolerance "
            f"{t.tol_steps:g}){rng}; first → last shape {t.drift:+.2f} steps."
        )
    lines.append(
        "Intervals cover seed noise only: a basin steeper on the high-LR side biases every "
        "vertex toward smaller LRs (0.2 grid steps on tests/test_transfer.py's planted basin), "
        "alike across shapes when they share the basin's shape."
    )
    lines += [f"WARNING: {w}" for w in t.warnings]
    return "\n".join(lines)


def _plot(t: Transfer, out: Path) -> list[Path]:
    plt = plotting.pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), width_ratios=(1.6, 1))
    cmap = plt.get_cmap("viridis")
    shapes = list(t.optima["shape"])
    for i, (s, r) in enumerate(zip(shapes, t.optima.itertuples(), strict=True)):
        c = cmap(i / max(len(shapes) - 1, 1))
        g = t.points[t.points["shape"] == s]
        fin = g[np.isfinite(g["loss"].astype(float))]
        ax.scatter(fin["lr"], fin["loss"], s=9, color=c, alpha=0.35, lw=0)
        mean = fin.groupby("lr")["loss"].mean()
        ax.plot(mean.index, mean.values, "-o", ms=3.5, color=c, label=str(s))
        if r.bracketed:
            ax.axvline(r.lr_opt, color=c, ls=":", lw=1.2)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final validation loss (points: seeds; line: seed mean)")
    ax.legend(title="shape", fontsize=8)
    ax.set_title("Loss vs LR per shape (dotted: fitted optimum)")
    ok = t.optima[t.optima["bracketed"]]
    x = np.arange(len(shapes))
    idx = [shapes.index(s) for s in ok["shape"]]
    err = np.abs(
        np.log10(ok[["lo90", "hi90"]].to_numpy(float).T) / t.step_decades
        - ok["log10_lr_opt"].to_numpy(float) / t.step_decades
    )
    bx.errorbar(x[idx], ok["step"], yerr=np.nan_to_num(err, nan=0.0), fmt="o", capsize=4)
    if len(ok):
        base = float(ok["step"].iloc[0])
        bx.axhspan(base - t.tol_steps, base + t.tol_steps, color="0.9", zorder=0)
    bx.set_xticks(x, [str(s) for s in shapes])
    bx.set_ylabel("optimum, grid steps from the smallest LR")
    bx.set_title(f"{t.verdict}: spread {t.spread:.2f} steps ({100 * LEVEL:g}% intervals)")
    fig.tight_layout()
    return plotting.save_figure(fig, out / "transfer")


# What must be equal across a transfer check's runs: one parameterisation from one base, one
# batch and one planned length (a shape trained longer would move its own optimum). Planned,
# not trained: a diverged run stops early and still counts (as +inf).
SAME = (
    "model.parameterization",
    "model.base_width",
    "model.depth_scaling",
    "model.base_depth",
    "model.context_length",
    "train.batch_size",
    "train.steps",
)


def analyse(
    results: str | Path | tuple[pd.DataFrame, pd.DataFrame],
    *,
    tol_steps: float = 1.0,
    half_window: int = 2,
) -> Transfer:
    """Transfer check of a results directory (or (runs_df, curves_df)): shapes are (width,
    depth), repeated LRs are seeds (train.seed), the loss is the final eval loss."""
    runs, _ = results if isinstance(results, tuple) else results_lib.load(results)
    if not len(runs) or "train.lr" not in runs:
        raise ValueError(f"no runs with a train.lr under {results}")
    runs = runs[runs["status"].isin(["done", "diverged"])]
    for col in SAME:
        vals = runs[col].astype(str).unique() if col in runs else []
        if len(vals) > 1:
            raise ValueError(
                f"runs differ in {col} ({', '.join(sorted(vals))}): a transfer check compares "
                "shapes under one setting; give each its own results directory or --study"
            )
    runs = runs.sort_values(["model.d_model", "model.n_layers"], kind="stable")
    shape = "w" + runs["model.d_model"].astype(int).astype(str)
    shape = shape + " d" + runs["model.n_layers"].astype(int).astype(str)
    loss = runs["loss"].astype(float).where(runs["status"] != "diverged", np.inf)
    pts = pd.DataFrame(
        {
            "shape": shape,
            "lr": runs["train.lr"].astype(float),
            "seed": runs["train.seed"].astype(int),
            "loss": loss,
        }
    )
    return check(pts, tol_steps=tol_steps, half_window=half_window)
