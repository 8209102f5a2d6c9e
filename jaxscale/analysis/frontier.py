"""Loss-vs-compute frontiers and compute-optimal model sizes from a results directory or a CSV.

Two estimates, both under one FLOP convention:
- the lower envelope of every run's loss-vs-compute curve (Kaplan et al. 2020 §6, L(C_min)),
  built from held-out eval_loss points by default (train loss, EMA-smoothed, on request); note
  that intermediate points of a cosine-scheduled run sit above what a run sized for that
  compute would reach (Hoffmann et al. 2022 §2), so the envelope is an upper bound on L(C);
- isoFLOP profiles (Hoffmann et al. 2022 approach 2, analysis.isoflop): per budget, a parabola
  in log10 N through the sizes nearest the best run, its vertex N_opt(C) with a 90% bootstrap
  interval when the best run is bracketed by trained sizes, and the exponents a, b of
  N_opt ∝ C^a, D_opt ∝ C^b with 90% intervals from three or more bracketed vertices (refused
  below that). A least-squares Chinchilla fit of the same points (Approach 3, variable
  projection) measures the bias Approach 2 is known to have on this grid.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxscale.analysis import isoflop, plotting
from jaxscale.analysis.fit import load_fit_data
from jaxscale.analysis.fit.varpro import VarProFit, fit_varpro
from jaxscale.core import flops
from jaxscale.runs import results as results_lib

DEFAULT_CONVENTION = "kaplan_attn"
_TAG = re.compile(r"C(\d\.\d+e[+-]\d+)")
# Optima columns printed by describe() (optima.csv has them all).
SHOWN_COLUMNS = [
    "budget",
    "n_runs",
    "n_window",
    "best_N",
    "best_loss",
    "N_opt",
    "N_opt_lo",
    "N_opt_hi",
    "D_opt",
    "tokens_per_param",
    "loss_opt",
    "note",
]
PARAM_NAMES = {
    "n_params": "total parameters",
    "n_params_nonembedding": "non-embedding parameters",
    "N": "N as given",
}
_VARPRO_BOUNDS = (0.01, 2.5)


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


# --- final-loss points: from runs or from a CSV --------------------------------------------------


def run_points(runs_df: pd.DataFrame, convention: str, ncol: str) -> pd.DataFrame:
    """run_id, name, N, D, C, loss, budget of finished runs (budget from the name tag, or NaN)."""
    cols = ["run_id", "name", "N", "D", "C", "loss", "budget"]
    if not len(runs_df) or "status" not in runs_df:
        return pd.DataFrame(columns=cols)
    df = runs_df[(runs_df["status"] == "done") & np.isfinite(runs_df["loss"].astype(float))]
    out = pd.DataFrame(
        {
            "run_id": df["run_id"],
            "name": df["name"].astype(str),
            "N": df[ncol].astype(float),
            "D": df["tokens"].astype(float),
            "C": results_lib.compute(df, convention),
            "loss": df["loss"].astype(float),
            # Runs made by grids.isoflop_plan carry their budget in the name (C1.000e+12).
            "budget": df["name"].astype(str).str.extract(_TAG)[0].astype(float),
        }
    )
    return out[cols].reset_index(drop=True)


def csv_points(source: Any, convention: str) -> tuple[pd.DataFrame, str]:
    """Points of a CSV (fit.load_fit_data's columns N, D and/or C, loss[, budget]) and the
    convention its C is in: flops_<convention> if present, else C as given, else 6ND."""
    df = load_fit_data(source, flops_convention=convention)
    if not {"N", "loss"} <= set(df) or not ({"C", "D"} & set(df)):
        raise ValueError(
            f"{source}: an isoFLOP table needs columns N, loss and C or D (optionally budget); "
            f"have {list(df.columns)}"
        )
    if f"flops_{convention}" in df:
        label = convention
    elif "C" in df:
        label = "as given in the table"
    else:
        label = "by C = 6ND"
        df["C"] = 6.0 * df["N"] * df["D"]  # Kaplan et al. 2020 §2.1
    if "D" not in df:
        df["D"] = df["C"] / (6.0 * df["N"])  # the same convention fit.prepare_data uses
    out = pd.DataFrame(
        {
            "run_id": [f"row{i}" for i in range(len(df))],
            "name": df["name"].astype(str) if "name" in df else "",
            "N": df["N"].astype(float),
            "D": df["D"].astype(float),
            "C": df["C"].astype(float),
            "loss": df["loss"].astype(float),
            "budget": df["budget"].astype(float) if "budget" in df else math.nan,
        }
    )
    ok = np.isfinite(out[["N", "D", "C", "loss"]]).all(axis=1) & (out[["N", "D", "C"]] > 0).all(
        axis=1
    )
    return out[ok].reset_index(drop=True), label


def assign_budgets(points: pd.DataFrame, *, rtol: float = 0.1) -> pd.DataFrame:
    """Fill missing budgets by clustering C: a new budget starts where C jumps by more than
    rtol; each cluster's budget is its geometric-mean C."""
    df = points.copy()
    todo = df[df["budget"].isna()].sort_values("C")
    if len(todo):
        logc = np.log(todo["C"].to_numpy(float))
        gid = np.cumsum(np.r_[True, np.diff(logc) > math.log1p(rtol)])
        mean_log = pd.Series(logc).groupby(gid).transform("mean").to_numpy()
        df.loc[todo.index, "budget"] = np.exp(mean_log)
    return df


# --- the whole analysis -----------------------------------------------------------------------


@dataclass(frozen=True)
class Frontier:
    """Everything `jaxscale frontier` computes: envelope, isoFLOP profiles, exponents, bias."""

    source: str
    convention: str  # FLOP convention of C; for a table "as given in the table" or "by C = 6ND"
    loss: str
    params: str  # the N column
    points: pd.DataFrame  # curve points behind the envelope (empty for a CSV)
    envelope: pd.DataFrame
    runs: pd.DataFrame  # final-loss points: run_id, name, N, D, C, loss, budget
    profiles: tuple[isoflop.Profile, ...]
    skipped: tuple[str, ...]  # budgets with too few sizes for a profile
    optima: pd.DataFrame
    window: int
    a: isoflop.Exponent | None
    b: isoflop.Exponent | None
    refusal: str | None  # why there is no exponent
    surface: VarProFit | None  # least-squares Chinchilla fit of the same points
    surface_problem: str | None  # why the surface is not used for the bias check
    bias: isoflop.BiasCheck | None

    @property
    def n_label(self) -> str:
        return PARAM_NAMES.get(self.params, self.params)

    @property
    def c_label(self) -> str:
        return f"C [FLOPs, {self.convention}]"

    @property
    def c_text(self) -> str:
        """How C was counted, for a sentence: 'kaplan_attn FLOPs', 'FLOPs as given in …'."""
        known = self.convention in flops.CONVENTIONS
        return f"{self.convention} FLOPs" if known else f"FLOPs {self.convention}"

    def exponent_line(self) -> str:
        """The allocation exponents with their intervals and conventions, or the refusal."""
        head = "Approach 2 (isoFLOP vertices, Hoffmann 2022 §3.2)"
        if self.a is None:
            return f"{head}: no exponent: {self.refusal}"
        line = (
            f"{head}: N_opt ∝ C^a, a = {self.a}; D_opt ∝ C^b, b = {self.b}; from "
            f"{self.a.n_vertices} bracketed vertices, window of {self.window} sizes; "
            f"C in {self.c_text}, N = {self.n_label}"
        )
        if self.a.n_vertices < isoflop.MIN_VERTICES:
            line += "; FORCED below 3 vertices: the interval cannot test the power law"
        return line

    def warnings(self) -> list[str]:
        """Everything a reader of the numbers must know: unbracketed budgets, bias, gaps."""
        out = [f"C={p.budget:.3g}: {p.note}" for p in self.profiles if not p.bracketed]
        out += list(self.skipped)
        if self.bias is not None and self.bias.significant:
            out.append(self.bias.describe())
        if self.a is not None and not self.a.has_interval:
            out.append(
                "the exponent's 90% interval is unbounded: profiles too flat for their noise"
                if math.isinf(self.a.lo) or math.isinf(self.a.hi)
                else "the exponent has no interval: no residual dof in the window fits"
            )
        return out

    def table(self) -> pd.DataFrame:
        """isoFLOP optima, one row per compute budget (lo/hi: 90% bootstrap intervals)."""
        return self.optima

    def describe(self) -> str:
        """Counts, the optima table, the exponents with intervals, and every warning."""
        lines = [
            f"{self.source}: {len(self.runs)} final-loss points in {len(self.profiles)} isoFLOP "
            f"profiles; {len(self.points)} {self.loss}-loss curve points, "
            f"{len(self.envelope)} on the envelope (C in {self.c_text}, "
            f"N = {self.n_label})"
        ]
        if len(self.optima):
            lines.append(
                "N_opt_lo/hi: 90% bootstrap interval of the window parabola's vertex; blank "
                "where the optimum is not bracketed by trained sizes"
            )
            lines.append(_text_table(self.optima[SHOWN_COLUMNS]))
        lines.append(self.exponent_line())
        if self.bias is not None and not self.bias.significant:
            lines.append(self.bias.describe())
        elif self.bias is None and self.surface_problem and self.a is not None:
            lines.append(f"no bias check: {self.surface_problem}")
        lines += [f"warning: {w}" for w in self.warnings()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Every number, with its convention, as JSON-ready data."""

        def num(v: float) -> float | None:  # strict JSON: no NaN or Infinity
            return float(v) if math.isfinite(v) else None

        def exp(e: isoflop.Exponent | None) -> dict[str, Any] | None:
            if e is None:
                return None
            return {
                "value": e.value,
                "lo": num(e.lo),
                "hi": num(e.hi),
                "level": e.level,
                "n": e.n_vertices,
                "interval": str(e),
            }

        return {
            "source": self.source,
            "convention": self.convention,
            "loss": "eval_loss" if self.loss == "eval" else "train loss (EMA-smoothed)",
            "params": self.params,
            "window": self.window,
            "a": exp(self.a),
            "b": exp(self.b),
            "refusal": self.refusal,
            "surface": self.surface.params() if self.surface is not None else None,
            "surface_problem": self.surface_problem,
            "bias": (
                {
                    "bias": num(self.bias.bias),
                    "method_bias": num(self.bias.method_bias),
                    "convention_tilt": num(self.bias.convention_tilt),
                    "surface_a": num(self.bias.surface_a),
                    "simulated_a": num(self.bias.simulated_a),
                    "significant": self.bias.significant,
                    "text": self.bias.describe(),
                }
                if self.bias is not None
                else None
            ),
            "warnings": self.warnings(),
            "optima": json.loads(self.optima.to_json(orient="records")),
        }

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write envelope.csv, optima.csv, frontier.json and the plots (PNG + SVG)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.envelope.to_csv(out / "envelope.csv", index=False)
        self.optima.to_csv(out / "optima.csv", index=False)
        (out / "frontier.json").write_text(json.dumps(self.to_dict(), indent=2))
        written = [out / "envelope.csv", out / "optima.csv", out / "frontier.json"]
        return written + self.plot(out)

    def plot(self, out_dir: str | Path) -> list[Path]:
        """loss_vs_compute (runs only), isoflop and optima figures as PNG and SVG."""
        return _plot(self, Path(out_dir))


def _text_table(df: pd.DataFrame) -> str:
    """Every row and column, never elided."""
    with pd.option_context(
        "display.width", 10_000, "display.max_columns", None, "display.max_rows", None
    ):
        return df.to_string(
            index=False, na_rep="", float_format=lambda v: f"{v:.4g}", max_colwidth=80
        )


def _optima(profiles: list[isoflop.Profile], pts: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for p in profiles:
        g = pts[pts["budget"] == p.budget]
        best = g.loc[g["loss"].idxmin()]
        row: dict[str, Any] = {
            "budget": p.budget,
            "C": float(np.exp(np.log(g["C"]).mean())),
            "n_runs": len(g),
            "n_window": int(p.window_K.sum()),
            "best_run_id": best["run_id"],
            "best_N": float(best["N"]),
            "best_D": float(best["D"]),
            "best_loss": float(best["loss"]),
            "N_min": float(g["N"].min()),
            "N_max": float(g["N"].max()),
            "D_min": float(g["D"].min()),
            "D_max": float(g["D"].max()),
            "bracketed": p.bracketed,
            "note": p.note,
        }
        if p.bracketed and any(map(math.isinf, p.interval())):
            row["note"] = "vertex interval unbounded: profile too flat for its noise; add sizes"
        elif p.bracketed and any(map(math.isnan, p.interval())):
            row["note"] = "no vertex interval: no residual dof to estimate the noise; add sizes"
        # Only a bracketed vertex is a number worth printing; the note says what bounds it.
        v = p.vertex if p.bracketed else math.nan
        lo, hi = p.interval() if p.bracketed else (math.nan, math.nan)
        logD = float(p.logD_at(v)) if p.bracketed else math.nan
        row.update(
            {
                "log10_N_opt": v,
                "N_opt": 10**v,
                "N_opt_lo": 10**lo,
                "N_opt_hi": 10**hi,
                "log10_D_opt": logD,
                "D_opt": 10**logD,
                # D falls along the profile as N rises: the N interval's ends swap for D.
                "D_opt_lo": 10 ** float(p.logD_at(hi)) if p.bracketed else math.nan,
                "D_opt_hi": 10 ** float(p.logD_at(lo)) if p.bracketed else math.nan,
                "tokens_per_param": 10 ** (logD - v),
                "loss_opt": p.loss_opt if p.bracketed else math.nan,
                "curvature": p.fit.a,
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def surface_problem(fit: VarProFit) -> str | None:
    """Why a least-squares Chinchilla fit cannot stand for the data's surface (None if it can)."""
    if fit.A <= 0 or fit.B <= 0:
        return f"the least-squares fit drops the {'N' if fit.A <= 0 else 'D'} term (A or B = 0)"
    at = [
        k for k in ("alpha", "beta") if min(abs(getattr(fit, k) - b) for b in _VARPRO_BOUNDS) < 1e-6
    ]
    if at:
        return f"the least-squares fit puts {', '.join(at)} at its search bound: unidentified"
    return None


def analyse(
    source: Any,
    convention: str = DEFAULT_CONVENTION,
    *,
    loss: str = "eval",
    params: str | None = None,
    window: int = isoflop.WINDOW,
    noise_sd: float | None = None,
    n_boot: int = isoflop.N_BOOT,
    seed: int = 0,
    force: bool = False,
    rtol: float = 0.1,
    name: str | None = None,
) -> Frontier:
    """Envelope, isoFLOP profiles and exponents of a results directory, a (runs_df, curves_df)
    pair, or a CSV / DataFrame of N, D or C, loss[, budget] (fit.load_fit_data's columns);
    `name` labels the source in describe()."""

    flops.check_convention(convention)
    curves_df = pd.DataFrame()
    if isinstance(source, tuple):
        runs_df, curves_df = source
        source_name = "runs"
    elif isinstance(source, pd.DataFrame) or Path(source).is_file():
        runs_df = None
        source_name = "table" if isinstance(source, pd.DataFrame) else str(source)
    elif Path(source).is_dir():
        runs_df, curves_df = results_lib.load(source)
        source_name = str(source)
    else:
        raise FileNotFoundError(f"{source}: no such results directory or CSV file")
    if runs_df is not None:
        ncol = param_column(convention, params)
        pts, conv = run_points(runs_df, convention, ncol), convention
    elif params is not None:
        raise ValueError("params applies to runs; a table's N is taken as given")
    else:
        (pts, conv), ncol = csv_points(source, convention), "N"
    name = name or source_name
    pts = assign_budgets(pts, rtol=rtol)
    points = curve_points(curves_df, convention, loss=loss)

    sizes = pts.groupby("budget")["N"].nunique()
    skipped = tuple(
        f"C={b:.3g}: {n} size(s), a profile needs 3 (not used)" for b, n in sizes.items() if n < 3
    )
    prof_pts = pts[pts["budget"].isin(sizes[sizes >= 3].index)]
    profiles = (
        isoflop.fit_profiles(
            prof_pts["budget"],
            np.log10(prof_pts["N"]),
            prof_pts["loss"],
            np.log10(prof_pts["D"]),
            window=window,
            noise_sd=noise_sd,
            n_boot=n_boot,
            seed=seed,
        )
        if len(prof_pts)
        else []
    )
    a = b = None
    refusal = None
    if not profiles:
        refusal = "no budget has 3 or more finished sizes"
    else:
        try:
            a = isoflop.exponent(profiles, of="N", force=force)
            b = isoflop.exponent(profiles, of="D", force=force)
        except isoflop.ApproachTwoError as e:
            refusal = str(e)

    surface = problem = bias = None
    try:
        surface = fit_varpro(pts["N"], pts["D"], pts["loss"], bounds=_VARPRO_BOUNDS)
        problem = surface_problem(surface)
    except ValueError as e:
        problem = f"no least-squares fit of L(N, D): {e}"
    if a is not None and surface is not None and problem is None:
        bias = isoflop.expected_bias(profiles, surface, a, window=window)
    return Frontier(
        source=name,
        convention=conv,
        loss=loss,
        params=ncol,
        points=points,
        envelope=envelope(points),
        runs=pts,
        profiles=tuple(profiles),
        skipped=skipped,
        optima=_optima(profiles, pts),
        window=window,
        a=a,
        b=b,
        refusal=refusal,
        surface=surface,
        surface_problem=problem,
        bias=bias,
    )


# --- plots ---------------------------------------------------------------------------------------


def _log_ticks(ax: Any) -> None:
    """Major log ticks at 1, 2, 5 × 10^k labelled compactly; minor ticks unlabelled, so short
    ranges do not crowd the axis with overlapping labels."""
    import matplotlib.ticker as mt  # lazy, like pyplot

    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_major_locator(mt.LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8))
            axis.set_major_formatter(mt.FuncFormatter(lambda v, _: f"{v:.3g}"))
            axis.set_minor_formatter(mt.NullFormatter())


def _plot(fr: Frontier, out: Path) -> list[Path]:
    plt = plotting.pyplot()
    import matplotlib  # lazy, like pyplot: colour norms

    written: list[Path] = []
    ylabel = "eval loss" if fr.loss == "eval" else "train loss (EMA)"
    xlabel = f"training compute {fr.c_label}"
    nlabel = f"N [{fr.n_label}]"
    sizes = fr.runs.set_index("run_id")["N"] if len(fr.runs) else pd.Series(dtype=float)

    # 1. every curve and the envelope (Kaplan 2020 Fig. 1 middle); runs only, a CSV has no curves
    if len(fr.points):
        lognorm = matplotlib.colors.LogNorm(
            vmin=max(float(sizes.min()), 1.0), vmax=float(sizes.max()) + 1
        )
        cmap = plt.get_cmap("viridis")
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
            xscale="log",
            yscale="log",
            xlabel=xlabel,
            ylabel=ylabel,
            title="Loss vs compute, all runs",
        )
        _log_ticks(ax)
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=lognorm, cmap=cmap), ax=ax, label=nlabel)
        written += plotting.save_figure(fig, out / "loss_vs_compute")

    # 2. isoFLOP profiles with window parabolas and vertices (Hoffmann 2022 Fig. 3 left)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    budgets = [p.budget for p in fr.profiles]
    bnorm = matplotlib.colors.LogNorm(
        vmin=min(budgets, default=1), vmax=max(budgets, default=10) * 1.01
    )
    bcmap = plt.get_cmap("plasma")
    for p in fr.profiles:
        col = bcmap(bnorm(p.budget) * 0.85)
        N_K = 10**p.logN_K
        ax.scatter(
            N_K[p.window_K], p.loss_K[p.window_K], color=col, s=22, label=f"C={p.budget:.2e}"
        )
        ax.scatter(N_K[~p.window_K], p.loss_K[~p.window_K], facecolors="none", edgecolors=col, s=22)
        xw = p.logN_K[p.window_K]
        xs = np.linspace(xw.min() - 0.1, xw.max() + 0.1, 100)
        ax.plot(10**xs, p(xs), color=col, lw=1)
        if p.bracketed:
            lo, hi = p.interval()
            # An unbounded bootstrap side is drawn to the trained range, not to infinity.
            lo = max(lo, p.logN_K.min()) if math.isfinite(lo) else p.logN_K.min()
            hi = min(hi, p.logN_K.max()) if math.isfinite(hi) else p.logN_K.max()
            v = p.vertex
            ax.errorbar(
                [10**v],
                [p.loss_opt],
                xerr=[[10**v - 10**lo], [10**hi - 10**v]],
                fmt="D",
                color=col,
                mec="k",
                ms=6,
                capsize=3,
            )
        elif p.extend:
            i = 0 if p.extend == "smaller" else -1
            ax.annotate(
                "◀ N_opt?" if p.extend == "smaller" else "N_opt? ▶",
                (N_K[i], p.loss_K[i]),
                textcoords="offset points",
                xytext=(-6, 8) if p.extend == "smaller" else (6, 8),
                ha="left" if p.extend == "smaller" else "right",
                fontsize=8,
                color=col,
            )
    ax.set(
        xscale="log",
        xlabel=nlabel,
        ylabel=f"final {ylabel}",
        title=f"isoFLOP profiles ({fr.c_label}); ◆ vertex with 90% interval\n"
        f"parabola through the {fr.window} sizes nearest each best run (filled); ◀ ▶ not bracketed",
    )
    _log_ticks(ax)
    if fr.profiles:
        ax.legend(fontsize=8)
    written += plotting.save_figure(fig, out / "isoflop")

    # 3. N_opt(C), D_opt(C) (Hoffmann 2022 Fig. 3 middle/right)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    o = fr.optima
    for ax, key, e in ((axes[0], "N", fr.a), (axes[1], "D", fr.b)):
        if len(o):
            sub = o[o["bracketed"]]
            if len(sub):
                v = sub[f"{key}_opt"]
                # An unbounded side is drawn to the sizes (tokens) trained, not to 0 or ∞.
                lo = sub[f"{key}_opt_lo"].clip(lower=sub[f"{key}_min"]).fillna(v).clip(upper=v)
                hi = sub[f"{key}_opt_hi"].clip(upper=sub[f"{key}_max"]).fillna(v).clip(lower=v)
                ax.errorbar(
                    sub["C"],
                    v,
                    yerr=[v - lo, hi - v],
                    fmt="o",
                    color="C0",
                    capsize=3,
                    label="vertex, 90% interval (cut to the range trained)",
                )
            ax.scatter(
                o["C"], o[f"best_{key}"], facecolors="none", edgecolors="C1", label="best run"
            )
            if e is not None:
                logC = np.log10(sub["C"].to_numpy(float))
                logY = np.log10(sub[f"{key}_opt"].to_numpy(float))
                icpt = float(np.mean(logY - e.value * logC))
                cs = np.geomspace(o["C"].min(), o["C"].max(), 20)
                iv = f" [{e.lo:.2f}, {e.hi:.2f}] (90%)" if e.has_interval else " (no interval)"
                ax.plot(cs, 10**icpt * cs**e.value, "k--", lw=1, label=f"∝ C^{e.value:.2f}{iv}")
            ax.legend(fontsize=7, loc="lower right")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel=xlabel,
            ylabel=f"{key}_opt" + (f" [{fr.n_label}]" if key == "N" else " [tokens]"),
        )
        _log_ticks(ax)
    if fr.a is None:
        fig.text(
            0.01,
            -0.01,
            "no exponent: " + textwrap.fill(fr.refusal or "", 150),
            va="top",
            fontsize=8,
        )
    axes[0].set_title("compute-optimal model size")
    axes[1].set_title("compute-optimal tokens")
    fig.tight_layout()
    written += plotting.save_figure(fig, out / "optima")
    return written
