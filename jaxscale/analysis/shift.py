"""Distribution shift: does out-of-distribution loss track in-distribution loss across sizes?

Kaplan et al. 2020 §3.2.2 (Fig. 8): loss on other text distributions improves with model size
in parallel with the training-distribution loss, i.e. L_ood ≈ L_in + c with a roughly constant
offset c. For each OOD set we report, over runs (typically a model-size sweep):

- the constant-offset fit c = mean(L_ood - L_in) with a Student-t 95% interval;
- the free line L_ood = a + b·L_in (OLS, b's 95% interval): b ≈ 1 supports a constant offset,
  b > 1 means the OOD loss falls faster than the in-distribution loss as models grow;
- the power-law slopes of both losses in N (log-log least squares).

Reads <run_dir>/eval.json written by `jaxscale eval RESULTS --sets stdlib,site-packages,prose`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from jaxscale.analysis import plotting, position
from jaxscale.runs import store


@dataclass(frozen=True)
class OffsetFit:
    """Constant offset c (L_ood = L_in + c) and free line L_ood = a + b L_in, with 95% intervals."""

    n: int
    offset: float
    offset_ci: tuple[float, float]
    slope: float
    slope_ci: tuple[float, float]
    intercept: float
    resid_sd: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "offset": self.offset,
            "offset_ci95": list(self.offset_ci),
            "slope": self.slope,
            "slope_ci95": list(self.slope_ci),
            "intercept": self.intercept,
            "offset_resid_sd": self.resid_sd,
            "constant_offset_consistent": bool(self.slope_ci[0] <= 1.0 <= self.slope_ci[1]),
        }


def fit_offset(l_in: Sequence[float], l_ood: Sequence[float], level: float = 0.95) -> OffsetFit:
    """Offset and slope of OOD vs in-distribution loss, with Student-t intervals (OLS)."""

    x, y = np.asarray(l_in, float), np.asarray(l_ood, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = x.size
    if n < 2:
        raise ValueError(f"an offset needs >= 2 runs evaluated on both sets, got {n}")
    d = y - x
    c = float(d.mean())
    sd = float(d.std(ddof=1))
    q = stats.t.ppf(0.5 + level / 2, n - 1)
    half = q * sd / math.sqrt(n)
    slope, inter, s_ci = math.nan, math.nan, (math.nan, math.nan)
    if n >= 3 and np.ptp(x) > 0:
        X = np.stack([np.ones(n), x], 1)
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        r = y - X @ beta
        s2 = float(r @ r) / (n - 2)
        se_b = math.sqrt(s2 * np.linalg.inv(X.T @ X)[1, 1])
        qb = stats.t.ppf(0.5 + level / 2, n - 2)
        inter, slope = float(beta[0]), float(beta[1])
        s_ci = (slope - qb * se_b, slope + qb * se_b)
    return OffsetFit(n, c, (c - half, c + half), slope, s_ci, inter, sd)


def _loglog_slope(N: np.ndarray, L: np.ndarray) -> float:
    """-d log L / d log N by least squares (Kaplan 2020 eq. 1.1 without the constant)."""
    ok = np.isfinite(L) & (L > 0)
    if ok.sum() < 2 or np.unique(N[ok]).size < 2:
        return math.nan
    return float(-np.polyfit(np.log(N[ok]), np.log(L[ok]), 1)[0])


def shift_table(path: str | Path) -> pd.DataFrame:
    """One row per evaluated run: run_id, name, N, step, and loss_<set> for every set."""

    rows = []
    for ev in position.load_evals(path):
        row = {
            "run_id": ev["run_id"],
            "name": ev.get("name", ""),
            "N": ev["n_params_nonembedding"],
            "step": ev["step"],
        }
        for k, v in ev.get("sets", {}).items():
            row[f"loss_{k}"] = v["loss"]
            row[f"se_{k}"] = v.get("loss_se", math.nan)
        rows.append(row)
    if not rows:
        raise ValueError(
            f"no eval.json under {path}; run `jaxscale eval {path} "
            "--sets stdlib,site-packages,prose` first"
        )
    return pd.DataFrame(rows).sort_values("N").reset_index(drop=True)


@dataclass(frozen=True)
class ShiftStudy:
    """Per-set offset fits against the reference (in-distribution) set."""

    runs: pd.DataFrame  # shift_table: one row per evaluated run
    reference: str
    fits: dict[str, OffsetFit]
    slopes_N: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "sets": {
                k: {**f.to_dict(), "alpha_N": self.slopes_N.get(k)} for k, f in self.fits.items()
            },
            "alpha_N_reference": self.slopes_N.get(self.reference),
            "runs": json.loads(self.runs.to_json(orient="records")),
        }

    def table(self) -> pd.DataFrame:
        """One row per OOD set: offset and free-line slope with 95% intervals, alpha_N."""
        rows = {
            s: {
                "n": f.n,
                "offset": f.offset,
                "offset_lo95": f.offset_ci[0],
                "offset_hi95": f.offset_ci[1],
                "slope": f.slope,
                "slope_lo95": f.slope_ci[0],
                "slope_hi95": f.slope_ci[1],
                "offset_resid_sd": f.resid_sd,
                "constant_offset_consistent": f.to_dict()["constant_offset_consistent"],
                "alpha_N": self.slopes_N.get(s),
            }
            for s, f in self.fits.items()
        }
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("set")

    def describe(self) -> str:
        """Readable summary of the offsets."""
        lines = [
            f"{len(self.runs)} runs; reference {self.reference!r} "
            f"(alpha_N={self.slopes_N[self.reference]:.4f})"
        ]
        for s, f in self.fits.items():
            verdict = (
                "consistent with a constant offset"
                if f.to_dict()["constant_offset_consistent"]
                else "offset changes with loss"
            )
            lines.append(
                f"  {s:<14} offset c={f.offset:+.4f} nats (95% [{f.offset_ci[0]:+.4f}, "
                f"{f.offset_ci[1]:+.4f}], resid sd {f.resid_sd:.4f}); free-line slope "
                f"{f.slope:.3f} [{f.slope_ci[0]:.3f}, {f.slope_ci[1]:.3f}] -> {verdict}; "
                f"alpha_N={self.slopes_N[s]:.4f}"
            )
        return "\n".join(lines)

    def plot(self, out_dir: str | Path) -> list[Path]:
        """OOD vs in-distribution loss with the offset line, and every set's loss vs N."""
        return _plot(self, Path(out_dir))

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write shift.json (every number), shift.csv (per-run losses) and the plot."""
        out = Path(out_dir)
        store.write_json_atomic(out / "shift.json", self.to_dict())
        self.runs.to_csv(out / "shift.csv", index=False)
        return [out / "shift.json", out / "shift.csv", *self.plot(out)]


def analyse(
    path: str | Path,
    reference: str = "stdlib",
    sets: Sequence[str] | None = None,
    run_ids: Collection[str] | None = None,
) -> ShiftStudy:
    """Offsets of every other evaluated set against `reference` across the runs under path
    (only run_ids, when given: one study's runs)."""
    t = shift_table(path)
    if run_ids is not None:
        t = t[t["run_id"].isin(run_ids)].reset_index(drop=True)
    have = [c[5:] for c in t.columns if c.startswith("loss_")]
    if reference not in have:
        raise ValueError(
            f"reference set {reference!r} not evaluated; have {have} "
            f"(run `jaxscale eval {path} --sets {reference},...`)"
        )
    others = [s for s in (sets or have) if s != reference]
    missing = [s for s in others if s not in have]
    if missing:
        raise ValueError(f"eval sets {missing} not in eval.json; have {have}")
    if not others:
        raise ValueError(
            f"only {reference!r} was evaluated; add OOD sets, e.g. "
            f"`jaxscale eval {path} --sets {reference},site-packages,prose`"
        )
    fits = {s: fit_offset(t[f"loss_{reference}"], t[f"loss_{s}"]) for s in others}
    N = t["N"].to_numpy(float)
    slopes = {s: _loglog_slope(N, t[f"loss_{s}"].to_numpy(float)) for s in [reference, *others]}
    return ShiftStudy(t, reference, fits, slopes)


def _plot(study: ShiftStudy, out: Path) -> list[Path]:
    plt = plotting.pyplot()
    t, ref = study.runs, study.reference
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = t[f"loss_{ref}"].to_numpy(float)
    xs = np.linspace(np.nanmin(x), np.nanmax(x), 20)
    for i, (s, f) in enumerate(study.fits.items()):
        c = f"C{i + 1}"
        ax.errorbar(x, t[f"loss_{s}"], yerr=t.get(f"se_{s}"), fmt="o", color=c, ms=4)
        ax.plot(
            xs,
            xs + f.offset,
            "-",
            color=c,
            label=f"{s}: c={f.offset:.3f} [{f.offset_ci[0]:.3f}, {f.offset_ci[1]:.3f}], "
            f"slope {f.slope:.2f}",
        )
        if math.isfinite(f.slope):
            ax.plot(xs, f.intercept + f.slope * xs, ":", color=c, lw=1)
    ax.plot(xs, xs, "k-", lw=0.6, label="y = x")
    ax.set(
        xlabel=f"in-distribution loss ({ref}) [nats/token]",
        ylabel="OOD loss [nats/token]",
        title="OOD loss = in-distribution loss + c (dotted: free line)",
    )
    ax.legend(fontsize=7)
    for i, s in enumerate([ref, *study.fits]):
        bx.plot(
            t["N"], t[f"loss_{s}"], "o-", color=f"C{i}", label=f"{s} (α_N={study.slopes_N[s]:.3f})"
        )
    bx.set(
        xscale="log",
        yscale="log",
        xlabel="non-embedding parameters N",
        ylabel="loss [nats/token]",
        title="loss vs N per eval set",
    )
    bx.legend(fontsize=7)
    fig.tight_layout()
    return plotting.save_figure(fig, out / "shift")
