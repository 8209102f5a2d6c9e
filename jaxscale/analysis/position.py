"""Loss by position in the context (Kaplan et al. 2020 §3.3, Fig. 20).

Per-token loss at position t (t = number of tokens the prediction conditions on) follows
L(t) = L_inf + A·t^-alpha for t >= 2 per model; the first token (t = 1, no context beyond
itself) is the exception and is reported separately. The trend with N is the per-position
scaling exponent -d log L(t) / d log N: larger models gain more at later positions, where they
can use the context. The per-position losses come from each run's eval.json (written by
jaxscale.core.evaluate.evaluate_run), or from training's final eval_loss_by_pos.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import curve_fit, minimize_scalar, nnls

from jaxscale.runs import store
from jaxscale.runs.rundir import run_dirs

ALPHA_MAX = 5.0  # position exponents beyond this are indistinguishable from a step at t_min


def load_evals(path: str | os.PathLike) -> list[dict]:
    """Every eval.json under a results (or run) directory, with its run directory as 'path'."""
    out = []
    for run in run_dirs(path, require=True):
        r = run.read_eval()
        if r is not None:
            out.append({**r, "path": str(run.path)})
    return out


@dataclass(frozen=True)
class PositionFit:
    """L(t) = L_inf + A t^-alpha over t >= t_min (Kaplan et al. 2020 §3.3, Fig. 20)."""

    L_inf: float
    A: float
    alpha: float
    se: dict[str, float]
    t_min: int
    rmse: float
    first_token_loss: float

    def __call__(self, t: Any) -> np.ndarray:
        return self.L_inf + self.A * np.asarray(t, float) ** -self.alpha

    @property
    def first_token_excess(self) -> float:
        """Observed L(1) minus the power law extrapolated to t = 1 (the first-token exception)."""
        return self.first_token_loss - float(self(1.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "L_inf": self.L_inf,
            "A": self.A,
            "alpha": self.alpha,
            "se": self.se,
            "t_min": self.t_min,
            "rmse": self.rmse,
            "first_token_loss": self.first_token_loss,
            "first_token_excess": self.first_token_excess,
        }


def _linear_given_alpha(
    t: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float
) -> tuple[np.ndarray, float]:
    """Weighted non-negative (L_inf, A) for fixed alpha: loss falls with context, never rises."""

    X = np.stack([np.ones_like(t), t**-alpha], axis=1) * w[:, None]
    beta, rnorm = nnls(X, y * w)
    return beta, float(rnorm**2)


def fit_position(
    loss_by_pos: Sequence[float], t_min: int = 2, se_by_pos: Sequence[float] | None = None
) -> PositionFit:
    """Fit L(t) = L_inf + A t^-alpha to per-position losses (index i predicts with t = i+1 tokens).

    alpha is profiled (non-negative least squares for L_inf, A at each alpha, then a bounded
    scalar refine); scipy.optimize.curve_fit then gives the covariance for the standard errors.
    Positions are weighted by 1/se when per-position standard errors are given.
    """

    y_all = np.asarray(loss_by_pos, float)
    if y_all.ndim != 1 or not np.isfinite(y_all).all():
        raise ValueError("loss_by_pos must be a 1-D list of finite per-position losses")
    t_all = np.arange(1, y_all.size + 1, dtype=float)
    keep = t_all >= t_min
    t, y = t_all[keep], y_all[keep]
    sig = None
    if se_by_pos is not None:
        sig = np.asarray(se_by_pos, float)[keep]
        if not (np.isfinite(sig).all() and (sig > 0).all()):
            sig = None
    w = 1 / sig if sig is not None else np.ones_like(t)
    if t.size < 5:
        raise ValueError(
            f"a position power law needs >= 5 positions at t >= {t_min}, got {t.size}; "
            "use a longer context"
        )
    grid = np.geomspace(1e-3, ALPHA_MAX, 80)
    sse = [_linear_given_alpha(t, y, w, a)[1] for a in grid]
    i = int(np.argmin(sse))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    res = minimize_scalar(
        lambda a: _linear_given_alpha(t, y, w, a)[1], bounds=(lo, hi), method="bounded"
    )
    alpha = float(res.x)
    (L_inf, A), s = _linear_given_alpha(t, y, w, alpha)
    se = {"L_inf": math.nan, "A": math.nan, "alpha": math.nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            p, cov = curve_fit(
                lambda tt, a, b, c: a + b * tt**-c,
                t,
                y,
                p0=[L_inf, A, min(alpha, ALPHA_MAX * 0.999)],
                sigma=sig,
                absolute_sigma=False,
                bounds=([0, 0, 0], [np.inf, np.inf, ALPHA_MAX]),
                maxfev=5000,
            )
            if np.all(np.isfinite(p)) and np.sum(((y - (p[0] + p[1] * t ** -p[2])) * w) ** 2) <= s:
                L_inf, A, alpha = (float(v) for v in p)
            se = dict(zip(("L_inf", "A", "alpha"), np.sqrt(np.clip(np.diag(cov), 0, None))))
            se = {k: float(v) for k, v in se.items()}
        except (RuntimeError, ValueError):
            pass
    pred = L_inf + A * t**-alpha
    rmse = float(np.sqrt(np.mean((y - pred) ** 2)))
    return PositionFit(float(L_inf), float(A), float(alpha), se, int(t_min), rmse, float(y_all[0]))


def position_exponents(N: Sequence[float], loss_by_pos_MxT: np.ndarray) -> np.ndarray:
    """Per position t, alpha_N(t) = -d log L(t) / d log N by least squares across M models."""
    x = np.log(np.asarray(N, float))
    Y = np.log(np.asarray(loss_by_pos_MxT, float))
    if x.size < 2 or np.unique(x).size < 2:
        return np.full(Y.shape[1], math.nan)
    xc = x - x.mean()
    return -(xc @ (Y - Y.mean(0))) / (xc @ xc)


@dataclass
class PositionStudy:
    """Per-model position fits and the trend of the per-position losses with N."""

    table: Any  # DataFrame: run_id, name, N, loss, L_inf, A, alpha, ..., first_token_excess
    curves: dict[str, np.ndarray]  # run_id -> loss_by_pos
    alpha_N_by_pos: np.ndarray
    eval_set: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "eval_set": self.eval_set,
            "source": self.source,
            "runs": json.loads(self.table.to_json(orient="records")),
            "alpha_N_by_pos": [
                None if not math.isfinite(v) else float(v) for v in self.alpha_N_by_pos
            ],
            "alpha_N_first_token": _f(self.alpha_N_by_pos[0]),
            "alpha_N_late": _f(
                np.mean(self.alpha_N_by_pos[-max(1, len(self.alpha_N_by_pos) // 4) :])
            ),
        }


def _f(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def position_study(
    path: str | os.PathLike,
    eval_set: str = "stdlib",
    t_min: int = 2,
    run_ids: Collection[str] | None = None,
) -> PositionStudy:
    """Fit L(t) per run from eval.json (falling back to training's final eval_loss_by_pos);
    only run_ids, when given (one study's runs)."""
    rows, curves, source = [], {}, ""
    for d in run_dirs(path, require=True):
        if run_ids is not None and d.name not in run_ids:
            continue
        ev = d.read_eval() or {}
        entry = ev.get("sets", {}).get(eval_set)
        se = None
        if entry and entry.get("loss_by_pos"):
            by_pos, loss, src = entry["loss_by_pos"], entry["loss"], f"eval.json[{eval_set}]"
            se = entry.get("loss_by_pos_se")
        elif eval_set == "stdlib":
            last = [r for r in d.read_metrics() if "eval_loss_by_pos" in r]
            if not last:
                continue
            by_pos, loss, src = (
                last[-1]["eval_loss_by_pos"],
                last[-1].get("eval_loss"),
                "metrics.jsonl",
            )
        else:
            continue
        cfg = d.read_config()
        fit = fit_position(by_pos, t_min, se)
        curves[d.name] = np.asarray(by_pos, float)
        source = source if source in ("", src) else "mixed"
        source = src if source == "" else source
        rows.append(
            {
                "run_id": d.name,
                "name": cfg.name,
                "N": cfg.model.n_params_nonembedding,
                "loss": loss,
                **{k: v for k, v in fit.to_dict().items() if k != "se"},
                **{f"{k}_se": v for k, v in fit.se.items()},
            }
        )
    if not rows:
        raise ValueError(
            f"no per-position losses for eval set {eval_set!r} under {path}; run "
            f"`jaxscale eval {path} --sets {eval_set} --per-position` first"
        )
    table = pd.DataFrame(rows).sort_values("N").reset_index(drop=True)
    T = min(c.size for c in curves.values())
    Y = np.stack([curves[r][:T] for r in table["run_id"]])
    return PositionStudy(table, curves, position_exponents(table["N"], Y), eval_set, source)


def plot_position(study: PositionStudy, out: str | Path) -> list[Path]:
    """L(t) per model with fits (log-log) and alpha_N(t): PNG + SVG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    tab = study.table
    cmap = plt.get_cmap("viridis")
    for i, r in tab.iterrows():
        c = cmap(i / max(len(tab) - 1, 1))
        y = study.curves[r["run_id"]]
        t = np.arange(1, y.size + 1)
        ax.plot(t, y, ".", ms=3, color=c)
        tt = np.geomspace(r["t_min"], y.size, 100)
        ax.plot(
            tt,
            r["L_inf"] + r["A"] * tt ** -r["alpha"],
            "-",
            lw=1,
            color=c,
            label=f"N={r['N']:.3g}: {r['L_inf']:.2f}+{r['A']:.2f}t^-{r['alpha']:.2f}",
        )
        ax.plot([1], [y[0]], "x", ms=8, color=c)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="token position t (tokens of context)",
        ylabel=f"loss [nats/token] ({study.eval_set})",
        title="loss by position (× = first token, excluded from fit)",
    )
    ax.legend(fontsize=7)
    a = study.alpha_N_by_pos
    if np.isfinite(a).any():
        bx.plot(np.arange(1, a.size + 1), a, "-", color="C1")
        bx.set_xscale("log")
    else:
        bx.text(0.5, 0.5, "needs >= 2 model sizes", ha="center", transform=bx.transAxes)
    bx.axhline(0, color="k", lw=0.5)
    bx.set(
        xlabel="token position t",
        ylabel="α_N(t) = -d log L(t) / d log N",
        title="gain from scale at each position",
    )
    fig.tight_layout()
    paths = []
    for ext in ("png", "svg"):
        p = out / f"position.{ext}"
        fig.savefig(p, dpi=130, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    return paths


def save_position(study: PositionStudy, out: str | Path) -> list[Path]:
    """position.json, position.csv and the plots in out."""

    out = Path(out)
    store.write_json_atomic(out / "position.json", study.to_dict())
    study.table.to_csv(out / "position.csv", index=False)
    return [out / "position.json", out / "position.csv", *plot_position(study, out)]


def describe_position(study: PositionStudy) -> str:
    """A readable paragraph of the position study's numbers."""
    t = study.table
    lines = [
        f"Loss by position ({study.eval_set}, from {study.source}); fit L(t) = L_inf + "
        f"A·t^-alpha over t >= {int(t['t_min'].iloc[0])}:"
    ]
    for _, r in t.iterrows():
        lines.append(
            f"  N={r['N']:>9,}  L_inf={r['L_inf']:.3f}±{r['L_inf_se']:.3f}  A={r['A']:.3f}  "
            f"alpha={r['alpha']:.3f}±{r['alpha_se']:.3f}  rmse={r['rmse']:.4f}  "
            f"L(1)={r['first_token_loss']:.3f} (fit at t=1 off by {r['first_token_excess']:+.3f})"
        )
    d = study.to_dict()
    if d["alpha_N_first_token"] is not None:
        lines.append(
            f"Scaling with N per position: alpha_N(t=1)={d['alpha_N_first_token']:.4f}, "
            f"alpha_N(last quarter of positions)={d['alpha_N_late']:.4f} "
            "(Kaplan: larger models gain more at later positions)."
        )
    return "\n".join(lines)
