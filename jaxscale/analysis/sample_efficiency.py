"""Sample efficiency and learning-curve extrapolation from one model-size sweep's curves.

Two questions Kaplan et al. 2020 answer from training curves (§3, Fig. 2; §5, eq. 1.6):

- tokens to reach a loss: for each target loss, the tokens D_L(N) each model needed, first
  crossing interpolated in log tokens between eval points; larger models reach the same loss in
  fewer tokens, D_L ∝ N^-gamma (gamma fitted by least squares in log-log);
- extrapolation: fit L(N, S) = (Nc/N)^aN + (Sc/S)^aS (Kaplan eq. 1.6, jaxscale.fit form
  'kaplan_ns', MAP) jointly to every run's curve observed up to a fraction f of its steps, then
  predict each run's final loss; the error vs f says how early a clearly off-frontier run can be
  stopped. (Kaplan's S_min correction for batch size is not applied: runs share one batch size.)
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

from jaxscale.analysis import fit as fit_lib
from jaxscale.analysis import plotting
from jaxscale.runs import results as results_lib
from jaxscale.runs import store

DEFAULT_FRACTIONS = (0.1, 0.2, 0.4, 0.6, 0.8)


# --- tokens to reach a loss -----------------------------------------------------------------


def first_crossing(tokens: Sequence[float], loss: Sequence[float], target: float) -> float:
    """Tokens at which a curve first reaches `target`, interpolated linearly in log tokens."""
    x = np.asarray(tokens, float)
    y = np.asarray(loss, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    hit = np.flatnonzero(y <= target)
    if not hit.size:
        return math.nan
    i = int(hit[0])
    if i == 0:
        return float(x[0])
    lx0, lx1 = math.log(x[i - 1]), math.log(x[i])
    w = (y[i - 1] - target) / (y[i - 1] - y[i])
    return float(math.exp(lx0 + w * (lx1 - lx0)))


def default_targets(curves: dict[str, pd.DataFrame], n: int = 4) -> np.ndarray:
    """Losses reached by >= 2 runs and not at the first eval of every run."""
    finals = np.sort([float(c["loss"].iloc[-1]) for c in curves.values()])
    firsts = [float(c["loss"].iloc[0]) for c in curves.values()]
    lo = finals[1] if finals.size > 1 else finals[0]
    hi = min(max(firsts), np.max(finals) + 0.5 * (max(firsts) - np.max(finals)))
    if not hi > lo:
        return np.array([lo])
    return np.linspace(lo, hi, n + 2)[1:-1]


def tokens_to_reach(
    runs: pd.DataFrame, curves: dict[str, pd.DataFrame], targets: Sequence[float]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-run table of D_L per target, per-target power law D_L ∝ N^-gamma)."""
    rows = []
    for _, r in runs.iterrows():
        c = curves[r["run_id"]]
        row = {"run_id": r["run_id"], "N": r["N"]}
        for L in targets:
            row[f"D@{L:.4g}"] = first_crossing(c["tokens"], c["loss"], L)
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("N").reset_index(drop=True)
    laws = []
    for L in targets:
        d = table[["N", f"D@{L:.4g}"]].dropna()
        g, g_se = math.nan, math.nan
        if len(d) >= 2 and d["N"].nunique() >= 2:
            x, y = np.log(d["N"].to_numpy(float)), np.log(d[f"D@{L:.4g}"].to_numpy(float))
            X = np.stack([np.ones_like(x), x], 1)
            beta, *_ = np.linalg.lstsq(X, y, rcond=None)
            g = -float(beta[1])
            if len(d) >= 3:
                r = y - X @ beta
                g_se = math.sqrt(float(r @ r) / (len(d) - 2) * np.linalg.inv(X.T @ X)[1, 1])
        laws.append(
            {"target_loss": float(L), "n_runs_reached": int(len(d)), "gamma": g, "gamma_se": g_se}
        )
    return table, pd.DataFrame(laws)


# --- learning-curve extrapolation (Kaplan 2020 eq. 1.6) -------------------------------------


def prepare_curves(
    runs_df: pd.DataFrame, curves_df: pd.DataFrame, *, loss: str = "train", window: float = 0.02
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(runs: run_id, N, steps, warmup, final_loss; per-run curves: step, tokens, loss).

    loss='train' smooths the per-step training loss with a centred mean over `window` of the
    run (the final value averages the last window/2); loss='eval' uses eval_loss points.
    """
    if loss not in ("train", "eval"):
        raise ValueError(f"loss must be 'train' or 'eval', got {loss!r}")
    done = runs_df[runs_df["status"] == "done"] if "status" in runs_df else runs_df
    out_runs, out_curves = [], {}
    for _, r in done.iterrows():
        c = curves_df[curves_df["run_id"] == r["run_id"]].sort_values("step")
        col = "loss" if loss == "train" else "eval_loss"
        c = c[["step", "tokens", col]].rename(columns={col: "loss"}).dropna()
        if len(c) < 3:
            continue
        steps = int(c["step"].max())
        if loss == "train":
            # Centred so the smoothed curve is not shifted later in S; the end is one-sided.
            k = max(1, int(round(window * len(c))))
            c = c.assign(loss=c["loss"].rolling(k, min_periods=1, center=True).mean())
        out_curves[r["run_id"]] = c.reset_index(drop=True)
        warm = r.get("train.warmup_steps", 0)
        out_runs.append(
            {
                "run_id": r["run_id"],
                "N": float(r["n_params_nonembedding"]),
                "steps": steps,
                "warmup": int(warm) if pd.notna(warm) else 0,
                "final_loss": float(c["loss"].iloc[-1]),
            }
        )
    if len(out_runs) < 2:
        raise ValueError(f"need >= 2 finished runs with {loss} curves, found {len(out_runs)}")
    return pd.DataFrame(out_runs).sort_values("N").reset_index(drop=True), out_curves


def _observed(
    runs: pd.DataFrame, curves: dict[str, pd.DataFrame], frac: float, max_points: int
) -> pd.DataFrame:
    """Points with warmup < step <= frac·steps, at most max_points per run (evenly spaced).

    Exactly max_points per run whenever a run has that many, so the fits at different
    fractions share one array shape and one compilation.
    """
    parts = []
    for _, r in runs.iterrows():
        c = curves[r["run_id"]]
        s_min = max(r["warmup"], 0.02 * r["steps"], 1)
        c = c[(c["step"] > s_min) & (c["step"] <= frac * r["steps"])]
        if len(c) > max_points:
            idx = np.round(np.linspace(0, len(c) - 1, max_points)).astype(int)
            c = c.iloc[idx]
        parts.append(
            pd.DataFrame(
                {
                    "N": r["N"],
                    "S": c["step"].to_numpy(float),
                    "loss": c["loss"].to_numpy(float),
                    "run_id": r["run_id"],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def extrapolation_errors(
    runs: pd.DataFrame,
    curves: dict[str, pd.DataFrame],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    max_points: int = 30,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict[float, dict[str, float]]]:
    """Fit L(N, S) on each observed fraction, predict every run's final loss; per-run errors."""

    rows, params = [], {}
    for f in sorted(fractions):
        if not 0 < f <= 1:
            raise ValueError(f"fractions must be in (0, 1], got {f}")
        obs = _observed(runs, curves, f, max_points)
        if len(obs) < fit_lib.get_form("kaplan_ns").min_points or obs["N"].nunique() < 2:
            continue
        res = fit_lib.fit(
            obs[["N", "S", "loss"]], form="kaplan_ns", method="map", seed=seed, quiet=True
        )
        params[f] = dict(res.point)
        pred = fit_lib.predict(
            res, {"N": runs["N"].to_numpy(float), "S": runs["steps"].to_numpy(float)}
        )["q50"].to_numpy()
        for (_, r), p in zip(runs.iterrows(), pred):
            rows.append(
                {
                    "fraction": f,
                    "run_id": r["run_id"],
                    "N": r["N"],
                    "n_points": int((obs["run_id"] == r["run_id"]).sum()),
                    "predicted": float(p),
                    "actual": r["final_loss"],
                    "rel_error": float(p / r["final_loss"] - 1),
                }
            )
    if not rows:
        raise ValueError("no fraction had enough observed points for an L(N, S) fit")
    return pd.DataFrame(rows), params


def error_summary(errors: pd.DataFrame) -> pd.DataFrame:
    """Median and max |relative error| of the final-loss prediction per observed fraction."""
    g = errors.assign(abs_err=errors["rel_error"].abs()).groupby("fraction")["abs_err"]
    return pd.DataFrame(
        {"median_abs_rel_error": g.median(), "max_abs_rel_error": g.max(), "n_runs": g.size()}
    ).reset_index()


# --- the study ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EfficiencyStudy:
    """Tokens-to-loss per N and learning-curve extrapolation errors."""

    runs: pd.DataFrame
    curves: dict[str, pd.DataFrame]
    reach: pd.DataFrame
    laws: pd.DataFrame
    errors: pd.DataFrame
    params: dict[float, dict[str, float]]
    loss: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "runs": json.loads(self.runs.to_json(orient="records")),
            "tokens_to_reach": json.loads(self.reach.to_json(orient="records")),
            "laws": json.loads(self.laws.to_json(orient="records")),
            "extrapolation": json.loads(self.table().to_json(orient="records")),
            "extrapolation_per_run": json.loads(self.errors.to_json(orient="records")),
            "fit_params": {str(k): v for k, v in self.params.items()},
        }

    def table(self) -> pd.DataFrame:
        """Extrapolation error of the final loss per observed fraction (error_summary)."""
        return error_summary(self.errors)

    def describe(self) -> str:
        """Readable summary of both analyses."""
        return _describe(self)

    def plot(self, out_dir: str | Path) -> list[Path]:
        """Curves with target crossings, D_L vs N, extrapolation error vs observed fraction."""
        return _plot(self, Path(out_dir))

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write efficiency.json (every number), the two per-run CSVs and the plot."""
        out = Path(out_dir)
        paths = [
            out / "efficiency.json",
            out / "efficiency_extrapolation.csv",
            out / "efficiency_tokens_to_reach.csv",
        ]
        store.write_json_atomic(paths[0], self.to_dict())
        self.errors.to_csv(paths[1], index=False)
        self.reach.to_csv(paths[2], index=False)
        return paths + self.plot(out)


def analyse_frames(
    runs_df: pd.DataFrame,
    curves_df: pd.DataFrame,
    *,
    targets: Sequence[float] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    loss: str = "train",
) -> EfficiencyStudy:
    """Study from results.load-style frames (runs_df, curves_df)."""
    runs, curves = prepare_curves(runs_df, curves_df, loss=loss)
    # Tokens-to-loss uses held-out eval points when there are enough, else the smoothed curve.
    ev_runs, ev_curves = runs, curves
    if loss == "train" and "eval_loss" in curves_df:
        try:
            ev_runs, ev_curves = prepare_curves(runs_df, curves_df, loss="eval")
        except ValueError:
            pass
    tg = np.asarray(targets, float) if targets is not None else default_targets(ev_curves)
    reach, laws = tokens_to_reach(ev_runs, ev_curves, tg)
    errors, params = extrapolation_errors(runs, curves, fractions)
    return EfficiencyStudy(runs, curves, reach, laws, errors, params, loss)


def analyse(results: str | Path, **kw: Any) -> EfficiencyStudy:
    """Study of every finished run in a results directory."""

    runs_df, curves_df = results_lib.load(results)
    return analyse_frames(runs_df, curves_df, **kw)


def _plot(study: EfficiencyStudy, out: Path) -> list[Path]:
    plt = plotting.pyplot()
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(15, 4.2))
    cmap = plt.get_cmap("viridis")
    M = len(study.runs)
    f_mid = sorted(study.params)[len(study.params) // 2] if study.params else None
    for i, (_, r) in enumerate(study.runs.iterrows()):
        c = study.curves[r["run_id"]]
        col = cmap(i / max(M - 1, 1))
        ax.plot(c["tokens"], c["loss"], "-", color=col, lw=1, label=f"N={r['N']:.3g}")
        if f_mid is not None:
            p = study.params[f_mid]
            tps = c["tokens"].iloc[-1] / r["steps"]
            s = np.geomspace(max(r["warmup"], 1) + 1, r["steps"], 60)
            pred = (np.exp(p["log_Nc"]) / r["N"]) ** p["alpha_N"] + (np.exp(p["log_Sc"]) / s) ** p[
                "alpha_S"
            ]
            ax.plot(s * tps, pred, ":", color=col, lw=1)
    for L in study.laws["target_loss"]:
        ax.axhline(L, color="grey", lw=0.5)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="tokens",
        ylabel=f"{study.loss} loss",
        title=f"curves (dotted: L(N,S) fit on first {f_mid:.0%})" if f_mid else "curves",
    )
    ax.legend(fontsize=7)
    for j, (_, law) in enumerate(study.laws.iterrows()):
        col = f"D@{law['target_loss']:.4g}"
        d = study.reach[["N", col]].dropna()
        bx.plot(
            d["N"],
            d[col],
            "o-",
            color=f"C{j}",
            label=f"L={law['target_loss']:.3f}: γ={law['gamma']:.2f}",
        )
    bx.set(
        xscale="log",
        yscale="log",
        xlabel="non-embedding parameters N",
        ylabel="tokens to reach loss",
        title="sample efficiency: D_L ∝ N^-γ",
    )
    bx.legend(fontsize=7)
    e = study.errors
    for rid, g in e.groupby("run_id", sort=False):
        N = g["N"].iloc[0]
        col = cmap(list(study.runs["run_id"]).index(rid) / max(M - 1, 1))
        cx.plot(
            g["fraction"], 100 * g["rel_error"].abs(), "o-", color=col, ms=3, label=f"N={N:.3g}"
        )
    s = study.table()
    cx.plot(s["fraction"], 100 * s["median_abs_rel_error"], "k-", lw=2, label="median")
    cx.set(
        yscale="log",
        xlabel="fraction of training observed",
        ylabel="|predicted/actual final loss - 1| [%]",
        title="L(N, S) extrapolation error",
    )
    cx.legend(fontsize=7)
    fig.tight_layout()
    return plotting.save_figure(fig, out / "efficiency")


def _describe(study: EfficiencyStudy) -> str:
    lines = ["Tokens to reach a loss (first crossing, eval points):"]
    for _, law in study.laws.iterrows():
        col = f"D@{law['target_loss']:.4g}"
        cells = ", ".join(
            f"N={r['N']:.3g}: {r[col]:.3g}"
            if math.isfinite(r[col])
            else f"N={r['N']:.3g}: not reached"
            for _, r in study.reach.iterrows()
        )
        lines.append(
            f"  L={law['target_loss']:.4f}: {cells}; D_L ∝ N^-{law['gamma']:.3f}"
            + (f"±{law['gamma_se']:.3f}" if math.isfinite(law["gamma_se"]) else "")
        )
    lines.append(
        f"L(N, S) = (Nc/N)^aN + (Sc/S)^aS fitted on the first fraction f of every "
        f"{study.loss} curve, predicting the final loss:"
    )
    for _, r in study.table().iterrows():
        p = study.params.get(r["fraction"], {})
        lines.append(
            f"  f={r['fraction']:.2f}: median |error| {100 * r['median_abs_rel_error']:.2f}%"
            f", max {100 * r['max_abs_rel_error']:.2f}%  (alpha_N={p.get('alpha_N', 0):.3f},"
            f" alpha_S={p.get('alpha_S', 0):.3f})"
        )
    return "\n".join(lines)
