"""Backtests: fit on part of the data, predict the held-out rest, and count what fell in its band.

The held-out points are the ones a scaling law is used for — the top budget, the largest
model, the last points along compute — so a backtest measures the error of the extrapolation
the study will be asked for, not of an interpolation (Tashman 2000, "Out-of-sample tests of
forecasting accuracy"). Each held-out truth is compared with its 90% posterior-predictive band
(noise and model discrepancy included, results.predict); the backtest passes when the number
of misses is one a calibrated 90% band would give at least 5% of the time (binomial).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats as st

from jaxscale.analysis import plotting
from jaxscale.analysis.fit import extrapolation as X
from jaxscale.analysis.fit import inference as inf
from jaxscale.analysis.fit.results import INTERVAL, FitResult, predict

HOLDOUTS = "top-budget | largest-n | last:K | a pandas query over the data's columns"
LEVEL = 0.9  # the band every backtest checks (the kit's interval convention)
MISS_TEST = 0.05  # a backtest fails when this few calibrated bands would miss as often


def holdout_mask(prob: inf.Problem, spec: str, rows: pd.DataFrame | None = None) -> np.ndarray:
    """Held-out points of a prepared problem for a hold-out spec (HOLDOUTS).

    top-budget: the highest compute level (the data's budget column, else C, grouped within
    0.05 decades); largest-n: the largest model size; last:K: the K points of largest compute;
    anything else is a pandas query selecting held-out rows of `rows` (the table the problem
    was prepared from), a point held out when any of its rows is.
    """
    d = prob.data
    c = d.level_c if d.level_c is not None else X.with_compute(d.x).get("C")
    spec = spec.strip()
    if spec == "top-budget":
        if c is None:
            raise ValueError("--holdout top-budget needs compute: a C or budget column, or N and D")
        lev = X.levels(c)
        if lev.max() < 1:
            raise ValueError("--holdout top-budget: all points are at one compute budget")
        return lev == lev.max()
    if spec == "largest-n":
        if "N" not in d.x:
            raise ValueError(f"--holdout largest-n: form {prob.form.name!r} has no input N")
        lev = X.levels(d.x["N"])
        if lev.max() < 1:
            raise ValueError("--holdout largest-n: all points have one model size")
        return lev == lev.max()
    m = re.fullmatch(r"last:(\d+)", spec)
    if m:
        k = int(m.group(1))
        if c is None:
            raise ValueError("--holdout last:K orders points by compute: needs C, or N and D")
        if not 0 < k < prob.size:
            raise ValueError(f"--holdout last:{k}: K must be between 1 and {prob.size - 1}")
        order = np.lexsort((d.x.get("N", np.zeros(prob.size)), c))
        mask = np.zeros(prob.size, bool)
        mask[order[-k:]] = True
        return mask
    if rows is None or d.row_point is None:
        raise ValueError(f"--holdout {spec!r}: not one of {HOLDOUTS} (no table to query)")
    try:
        held_rows = np.asarray(rows.eval(spec), bool)
    except Exception as e:  # noqa: BLE001 - pandas raises many types for a bad expression
        raise ValueError(
            f"--holdout {spec!r}: not one of {HOLDOUTS}, and as a query: {type(e).__name__}: {e}"
        ) from None
    if held_rows.shape != (len(rows),):
        raise ValueError(f"--holdout {spec!r}: the query must give one True/False per row")
    mask = np.zeros(prob.size, bool)
    mask[d.row_point[held_rows]] = True
    return mask


@dataclass(frozen=True)
class Backtest:
    """A fit on the kept points and its 90% predictive bands at the held-out ones."""

    holdout: str
    fit: FitResult  # on the kept points
    points: pd.DataFrame  # held-out: inputs, C, actual, q5/q50/q95, inside, log_error, decades

    @property
    def n(self) -> int:
        return len(self.points)

    @property
    def n_inside(self) -> int:
        return int(self.points["inside"].sum())

    @property
    def coverage(self) -> float:
        return self.n_inside / self.n

    @property
    def max_misses(self) -> int:
        """Most misses a calibrated 90% band gives with probability >= 1 - MISS_TEST."""
        return int(st.binom.ppf(1 - MISS_TEST, self.n, 1 - LEVEL))

    @property
    def passed(self) -> bool:
        """Diagnostics OK and no more misses than a calibrated 90% band allows."""
        return self.fit.ok and self.n - self.n_inside <= self.max_misses

    def half_width(self) -> float:
        """Median half-width of the held-out 90% bands, as a share of loss (log scale)."""
        p = self.points
        return float(np.median(np.log(p["q95"] / p["q5"]) / 2))

    def diagnosis(self) -> str:
        """Why a failed backtest failed, from its errors and the fit's caveats ('' if passed)."""
        if self.passed:
            return ""
        prior = [c.split(" — ")[0] for c in self.fit.caveats if c.startswith("prior-dominated")]
        if not self.fit.ok:
            why = "the fit on the kept points failed its diagnostics: " + "; ".join(
                self.fit.problems
            )
            return why + (f"; those {self.fit.loss.size} points leave {prior[0]}" if prior else "")
        err = self.points["log_error"]
        outside = self.points[~self.points["inside"]]
        side = "lower" if (outside["log_error"] < 0).mean() > 0.5 else "higher"
        why = (
            f"{self.n - self.n_inside} held-out losses fall outside their 90% bands where a "
            f"calibrated band misses at most {self.max_misses} of {self.n} (95%); they are "
            f"{side} than predicted (median error {np.median(err):+.1%} of loss), so the law "
            f"fitted to the other {self.fit.loss.size} points does not carry to the held-out ones"
        )
        if prior:
            why += f"; those points leave {prior[0]}"
        return why

    def headline(self) -> str:
        """One line: what was held out, coverage, error, and the verdict."""
        reach = self.points["decades_beyond"]
        verdict = "PASSED" if self.passed else "FAILED"
        why = f": {self.diagnosis()}" if not self.passed else ""
        return (
            f"backtest ({self.holdout}, {self.n} held out, {reach.min():.2g}-{reach.max():.2g} "
            f"decades beyond the {self.fit.loss.size} fitted points): {self.n_inside}/{self.n} "
            f"inside their 90% predictive bands (median half-width {self.half_width():.1%}), "
            f"median |error| {np.median(np.abs(self.points['log_error'])):.1%} of loss: "
            f"{verdict}{why}"
        )

    def table(self) -> pd.DataFrame:
        """The held-out points with their bands (90% central interval [q5, q95])."""
        return self.points

    def describe(self) -> str:
        """Headline, the held-out table and the fit's discrepancy term."""
        with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 140):
            return "\n".join(
                [
                    self.headline(),
                    self.points.to_string(float_format="{:.4g}".format),
                    f"bands: posterior predictive, {INTERVAL}, with residual noise and "
                    + self.fit.discrepancy.describe(),
                ]
            )

    def plot(self, out_dir: str | Path) -> list[Path]:
        """Actual vs predicted loss of the held-out points, with their 90% bands."""
        plt = plotting.pyplot()
        p = self.points
        fig, ax = plt.subplots(figsize=(5, 4))
        # one budget held out has one C: spread its points along N instead
        xcol = "N" if "N" in p and p["N"].nunique() > 1 else ("C" if "C" in p else p.columns[0])
        for inside, color, label in ((True, "C0", "inside"), (False, "C3", "outside")):
            q = p[p["inside"] == inside]
            if len(q):
                ax.errorbar(
                    q[xcol],
                    q["q50"],
                    yerr=[q["q50"] - q["q5"], q["q95"] - q["q50"]],
                    fmt="_",
                    color=color,
                    alpha=0.6,
                    label=f"predicted median, 90% band ({label})",
                )
                ax.scatter(q[xcol], q["actual"], color=color, marker="x", label=f"actual, {label}")
        plotting.log_axes(ax)
        ax.set_xlabel(f"{xcol} (held-out points)")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        ax.set_title(
            f"backtest {self.holdout}: {self.n_inside}/{self.n} inside 90% predictive bands",
            fontsize=9,
        )
        return plotting.save_figure(fig, Path(out_dir) / "backtest")

    def save(self, out_dir: str | Path) -> list[Path]:
        """backtest.csv, backtest.json (headline, coverage, verdict) and the plot."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.points.to_csv(out / "backtest.csv", index=False)
        info: dict[str, Any] = {
            "holdout": self.holdout,
            "headline": self.headline(),
            "held_out": self.n,
            "inside_90": self.n_inside,
            "coverage_90": self.coverage,
            "max_misses_95": self.max_misses,
            "passed": self.passed,
            "fit_ok": self.fit.ok,
            "fit_problems": self.fit.problems,
            "discrepancy": self.fit.discrepancy.describe(),
            "intervals": INTERVAL,
        }
        (out / "backtest.json").write_text(json.dumps(info, indent=2, default=float))
        return [out / "backtest.csv", out / "backtest.json", *self.plot(out)]


def backtest_problem(
    prob: inf.Problem,
    held_P: np.ndarray,
    holdout: str,
    *,
    discrepancy: str | X.Discrepancy = "estimate",
    seed: int = 0,
    **fit_kw: Any,
) -> Backtest:
    """Fit prob's points outside held_P (discrepancy estimated from them alone) and score the
    held-out ones against their 90% posterior-predictive bands."""
    held = np.asarray(held_P, bool)
    if not held.any():
        raise ValueError(f"--holdout {holdout!r}: selects no points")
    if held.all():
        raise ValueError(f"--holdout {holdout!r}: selects every point; nothing left to fit")
    if fit_kw.get("method") == "bootstrap":
        kept = {**{k: v[~held] for k, v in prob.data.x.items()}, "loss": prob.data.y[~held]}
        boot = {k: fit_kw[k] for k in ("n_boot", "x64") if k in fit_kw}
        res = inf.fit_huber(kept, prob.form, seed=seed, **boot)
    else:
        res = inf.fit_problem(prob, ~held, discrepancy=discrepancy, seed=seed, **fit_kw)
    xt = {k: v[held] for k, v in prob.data.x.items()}
    pr = predict(res, xt, seed=seed)
    actual = prob.data.y[held]
    pts = pd.DataFrame(xt)
    if prob.data.level_c is not None:
        pts["C"] = prob.data.level_c[held]
    pts["actual"] = actual
    for q in ("q5", "q50", "q95"):
        pts[q] = pr[q].to_numpy()
    pts["inside"] = (actual >= pts["q5"]) & (actual <= pts["q95"])
    pts["log_error"] = np.log(actual) - np.log(pts["q50"])
    pts["decades_beyond"] = pr["decades_beyond"].to_numpy()
    return Backtest(holdout, res, pts.reset_index(drop=True))


def backtest(
    data: Any,
    holdout: str = "top-budget",
    form: str = "chinchilla",
    *,
    priors: Any = None,
    noise: str = "student_t",
    df: float = 4.0,
    target: str = "loss",
    **fit_kw: Any,
) -> Backtest:
    """Hold out `holdout` (HOLDOUTS) of a DataFrame/dict, fit the rest, score the held-out."""
    rows = inf.canonical(data)
    prob = inf.setup(rows, form, priors=priors, noise=noise, df=df, target=target)
    return backtest_problem(prob, holdout_mask(prob, holdout, rows), holdout, **fit_kw)
