"""Step Law analysis: the best (η, B) per (N, D) and power laws for η_opt(N, D) and B_opt.

Li et al. 2025 (arXiv 2503.04715) fit η_opt = 1.79 N^-0.713 D^0.307 and B_opt = 0.58 D^0.571
(N non-embedding parameters, D training tokens, B tokens per step) and claim B_opt depends on
D, not N. Here, for every (N, D, B) a parabola in log10 η through the best LR and its
neighbours (lr_sensitivity.fit_lr_parabola, Kaplan 2020 App. D.6) gives η*(N, D, B) and its
loss; for every (N, D) a parabola in log10 B through those losses gives B_opt (three or more
batch sizes, bracketed), and η_opt(N, D) is η* at the best batch size. Optima at a grid's
edge are reported and left out of the fits. The optima are fitted with the Bayesian fitter
(three registered log-linear forms, exponent priors normal(0, 1), not centred on Step Law):

    step_law_lr        η_opt = c · N^a · D^b
    step_law_batch_D   B_opt = c · D^b               (Step Law's form)
    step_law_batch_ND  B_opt = c · N^a · D^b          (does N matter? a's interval should cover 0)

with 90% posterior intervals, set beside Step Law's constants (`table()`); `plot` draws the
loss landscape over (η, B) per (N, D) with the measured optimum and both laws' predictions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxscale.analysis import fit as F
from jaxscale.analysis import lr_sensitivity, plotting
from jaxscale.runs import results as results_lib
from jaxscale.runs import store
from jaxscale.runs.hparams import StepLaw

LEVEL = 0.9  # the kit's interval convention
SIGMA_PRIOR = F.Prior("halfnormal", 0.5)  # ln-scale scatter of grid optima: tens of percent
# Laplace's Gaussian at the joint mode drops the noise scale's skewed posterior: the mode of
# log σ sits below its bulk and the coefficients' intervals, conditional on it, come out too
# short (for a linear model the exact marginal is Student-t with n - p dof, not Gaussian). On
# planted Step Law landscapes (seeds 0-39, 90% intervals) B_opt = c·D^b on 5 distinct D
# (3 residual dof) covered the truth 30/40 per parameter with Laplace and 19/20 with NUTS; the
# 20-point forms (17 dof) 32-38/40 with Laplace. Below this many residual dof, NUTS is used.
LAPLACE_MIN_DOF = 10


def posterior_method(
    method: str, form: F.Form, n_points: int, min_dof: float = LAPLACE_MIN_DOF
) -> tuple[str, str | None]:
    """The method to fit `form` on n_points distinct points with, and a note on a Laplace request:
    refused (NUTS instead) below min_dof residual degrees of freedom, else its measured coverage."""
    dof = n_points - len(form.params)
    if method != "laplace":
        return method, None
    if dof >= min_dof:
        return method, (
            f"{form.name}: Laplace approximation ({dof} residual dof): on planted data with 17 "
            "dof its 90% intervals covered 80-95% per parameter; --method nuts for calibrated ones"
        )
    bound = "" if math.isinf(min_dof) else f" (< {min_dof:g})"
    return "nuts", (
        f"{form.name}: Laplace refused, fitted with NUTS — {n_points} distinct points for "
        f"{len(form.params)} parameters leave {dof} residual dof{bound}, where a Gaussian at the "
        "mode gave too-short 90% intervals on planted data"
    )


def _log_linear(name: str, inputs: tuple[str, ...], reference: str, description: str) -> F.Form:
    """log y = log_coef + Σ exp_x · log x: a pure power law in the inputs."""
    exps = {"N": "a_N", "D": "b_D"}

    def log_y(lx: Mapping[str, Any], p: Mapping[str, Any]) -> Any:
        return p["log_coef"] + sum(p[exps[x]] * lx[x] for x in inputs)

    return F.Form(
        name=name,
        inputs=inputs,
        priors={"log_coef": F.Prior("normal", 0.0, 10.0)}
        | {exps[x]: F.Prior("normal", 0.0, 1.0) for x in inputs},
        log_loss=log_y,
        reference=reference,
        description=description,
    )


REF = "Li et al. 2025 (Step Law, arXiv 2503.04715) eq. 1"
FORMS = {
    "lr": _log_linear("step_law_lr", ("N", "D"), REF, "eta_opt = coef * N^a_N * D^b_D"),
    "batch_D": _log_linear("step_law_batch_D", ("D",), REF, "B_opt = coef * D^b_D"),
    "batch_ND": _log_linear("step_law_batch_ND", ("N", "D"), REF, "B_opt = coef * N^a_N * D^b_D"),
}
for _f in FORMS.values():
    F.register_form(_f, overwrite=True)

# Step Law's published values of each form's parameters (coef in natural units).
PUBLISHED = {
    "lr": {"coef": StepLaw().coef, "a_N": StepLaw().exp_N, "b_D": StepLaw().exp_D},
    "batch_D": {"coef": StepLaw().batch_coef, "b_D": StepLaw().batch_exp_D},
    "batch_ND": {"coef": StepLaw().batch_coef, "a_N": 0.0, "b_D": StepLaw().batch_exp_D},
}
TARGET = {"lr": "lr_opt", "batch_D": "B_opt", "batch_ND": "B_opt"}


@dataclass(frozen=True)
class LawFit:
    """A form fitted on inputs divided by their geometric means `ref`, which decorrelates the
    coefficient from the exponents for the sampler; draws and predictions in natural units."""

    key: str
    result: F.FitResult
    ref: dict[str, float]
    method: str = "nuts"

    def draws(self, param: str) -> np.ndarray:
        """Posterior draws of a parameter; coef in natural units, c·Π ref_x^-e_x."""
        if param != "coef":
            return self.result.flat(param)
        exps = {"N": "a_N", "D": "b_D"}
        log_c = self.result.flat("log_coef")
        for x, r in self.ref.items():
            log_c = log_c - self.result.flat(exps[x]) * math.log(r)
        return np.exp(log_c)

    def predict(self, inputs: Mapping[str, Any]) -> pd.DataFrame:
        """Posterior median and 5/25/75/95% quantiles of the law at the given inputs."""
        scaled = {x: np.asarray(inputs[x], float) / r for x, r in self.ref.items()}
        out = F.predict(self.result, scaled)
        for x in self.ref:
            out[x] = np.asarray(inputs[x], float)
        return out


@dataclass(frozen=True)
class StepLawStudy:
    """Per-(N, D, B) LR optima, per-(N, D) best (η, B), the three fits and their caveats."""

    points: pd.DataFrame  # N, D, B, lr, loss (inf = diverged)
    optima: pd.DataFrame  # per (N, D, B): lr_opt, log10_lr_opt_se, loss_opt, edge, ...
    best: pd.DataFrame  # per (N, D): lr_opt, lr_edge, B_opt, log10_B_opt_se, B_edge, loss
    fits: dict[str, LawFit | None]
    notes: tuple[str, ...] = ()
    method: str = "nuts"

    def table(self) -> pd.DataFrame:
        """Each fitted parameter: posterior median and 90% interval beside Step Law's value."""
        rows = []
        for key, res in self.fits.items():
            if res is None:
                continue
            for p, pub in PUBLISHED[key].items():
                v = res.draws(p)
                q5, q50, q95 = np.quantile(v, [0.05, 0.5, 0.95])
                rows.append(
                    {
                        "law": FORMS[key].description,
                        "param": p,
                        "median": q50,
                        "q5": q5,
                        "q95": q95,
                        "step_law": pub,
                        "covers_step_law": bool(q5 <= pub <= q95),
                        "method": res.method,
                    }
                )
        return pd.DataFrame(rows)

    def predictions(self) -> pd.DataFrame:
        """Per (N, D): measured η_opt and B_opt, Step Law's values, and the fits' medians."""
        b = self.best.copy()
        sl = StepLaw()
        b["lr_step_law"] = [sl(n, d, 1.0) for n, d in zip(b["N"], b["D"])]
        b["B_step_law"] = [sl.batch(n, d, 1.0) for n, d in zip(b["N"], b["D"])]
        for key, col in (("lr", "lr_fit"), ("batch_D", "B_fit")):
            res = self.fits.get(key)
            if res is not None:
                pred = res.predict({k: b[k].to_numpy(float) for k in FORMS[key].inputs})
                b[col], b[col + "_q5"], b[col + "_q95"] = pred["q50"], pred["q5"], pred["q95"]
        return b

    def describe(self) -> str:
        """Readable summary: optima per (N, D), the fits beside Step Law, and every caveat."""
        return _describe(self)

    def plot(self, out_dir: str | Path) -> list[Path]:
        """Loss landscape over (η, B) per (N, D) and η_opt(N), B_opt(D) with both laws."""
        return _plot(self, Path(out_dir))

    def to_dict(self) -> dict[str, Any]:
        return {
            "convention": "N non-embedding params, D training tokens, B tokens per step; "
            f"{LEVEL:.0%} posterior intervals",
            "method": self.method,
            "notes": list(self.notes),
            "table": _records(self.table()),
            "best": _records(self.predictions()),
            "optima": _records(self.optima),
            "fits": {
                k: (None if r is None else {"ok": r.result.ok, "problems": r.result.problems})
                for k, r in self.fits.items()
            },
        }

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write step_law.json (every number), step_law_table.csv, step_law_best.csv, plots."""
        out = Path(out_dir)
        store.write_json_atomic(out / "step_law.json", self.to_dict())
        self.table().to_csv(out / "step_law_table.csv", index=False)
        self.predictions().to_csv(out / "step_law_best.csv", index=False)
        return [
            out / "step_law.json",
            out / "step_law_table.csv",
            out / "step_law_best.csv",
            *self.plot(out),
        ]


def _records(df: pd.DataFrame) -> list[dict]:
    return json.loads(df.to_json(orient="records"))


def analyse_points(
    points: pd.DataFrame,
    *,
    method: str = "nuts",
    half_window: int = 2,
    seed: int = 0,
    **fit_kw: Any,
) -> StepLawStudy:
    """Step Law study of a table with columns N, D, B (tokens/step), lr, loss (inf/NaN =
    diverged); fit_kw go to analysis.fit.fit (e.g. chains, warmup, draws)."""
    need = {"N", "D", "B", "lr", "loss"}
    if not need <= set(points.columns):
        raise ValueError(
            f"Step Law points need columns {sorted(need)}, have {list(points.columns)}"
        )
    pts = points.copy()
    pts["loss"] = pts["loss"].astype(float)
    notes: list[str] = []
    frames = []
    for D, g in pts.groupby("D", sort=True):
        try:
            lr_study = lr_sensitivity.analyse_points(
                g[["N", "B", "lr", "loss"]], half_window=half_window
            )
        except ValueError as e:
            notes.append(f"D={D:.3g}: no LR optimum ({e})")
            continue
        frames.append(lr_study.optima.assign(D=D))
    if not frames:
        raise ValueError("no (N, D, B) group has >= 3 finished learning rates")
    optima = pd.concat(frames, ignore_index=True)
    best = _best(optima, notes, half_window)
    fits = {key: _fit(key, best, method, seed, notes, fit_kw) for key in FORMS}
    if (best["n_batches"] < 3).all():
        notes.append("fewer than 3 batch sizes per (N, D): B_opt is not measured")
    if (best["N"] < StepLaw().domain.N[0] / 10).any():
        notes.append(
            f"N down to {best['N'].min():.3g}: Step Law was measured on ~1e8+ parameter models; "
            "a mismatch here tests its transfer to small scale, not the law at its scale"
        )
    return StepLawStudy(pts, optima, best, fits, tuple(notes), method)


def _best(optima: pd.DataFrame, notes: list[str], half_window: int) -> pd.DataFrame:
    """Per (N, D): the batch with the lowest loss, η* there, and B_opt from a parabola in
    log10 B through the per-batch minima (edge if the best batch ends the grid)."""
    rows = []
    for (N, D), g in optima.groupby(["N", "D"], sort=True):
        # The loss of a batch: the parabola minimum where η* is bracketed, else the best run.
        loss = np.where(g["edge"], g["best_loss"], np.fmin(g["loss_opt"], g["best_loss"]))
        g = g.assign(loss_B=loss)
        i = g["loss_B"].idxmin()
        row = {
            "N": int(N),
            "D": float(D),
            "B": float(g.loc[i, "B"]),
            "n_batches": int(g["B"].nunique()),
            "loss": float(g.loc[i, "loss_B"]),
            "lr_opt": float(g.loc[i, "lr_opt"]),
            "best_lr": float(g.loc[i, "best_lr"]),
            "log10_lr_opt_se": float(g.loc[i, "log10_lr_opt_se"]),
            "lr_edge": bool(g.loc[i, "edge"]),
            "lr_extrapolated": bool(g.loc[i, "extrapolated"]),
            "lr_fit_lo": 10 ** float(g.loc[i, "fit_lo"]),
            "lr_fit_hi": 10 ** float(g.loc[i, "fit_hi"]),
            "B_opt": math.nan,
            "log10_B_opt_se": math.nan,
            "B_edge": True,
            "B_extrapolated": False,
        }
        if g["B"].nunique() >= 3:
            f = lr_sensitivity.fit_lr_parabola(g["B"], g["loss_B"], half_window)
            xs = np.log10(g["B"].to_numpy(float))
            at_end = g.loc[i, "B"] in (g["B"].min(), g["B"].max())
            row["B_edge"] = bool(at_end or not (xs.min() <= f.vertex <= xs.max()) or f.a <= 0)
            row["B_opt"] = 10**f.vertex if math.isfinite(f.vertex) else math.nan
            row["log10_B_opt_se"] = f.vertex_se
            row["B_extrapolated"] = f.extrapolated
            row["B_fit_lo"], row["B_fit_hi"] = 10**f.lo, 10**f.hi
        rows.append(row)
    best = pd.DataFrame(rows)
    n_lr = int(best["lr_edge"].sum())
    n_b = int((best["B_edge"] & (best["n_batches"] >= 3)).sum())
    n_lx = int((best["lr_extrapolated"] & ~best["lr_edge"]).sum())
    n_bx = int((best["B_extrapolated"] & ~best["B_edge"]).sum())
    if n_lr:
        notes.append(f"{n_lr} of {len(best)} (N, D) have η_opt at the LR grid's edge: left out")
    if n_lx or n_bx:
        notes.append(
            f"EXTRAPOLATED: {n_lx} η_opt and {n_bx} B_opt of {len(best)} (N, D) lie outside the "
            "values their parabola was fitted on: left out"
        )
    if n_b:
        notes.append(f"{n_b} of {len(best)} (N, D) have B_opt at the batch grid's edge: left out")
    return best


def _fit(
    key: str,
    best: pd.DataFrame,
    method: str,
    seed: int,
    notes: list[str],
    fit_kw: Mapping[str, Any],
) -> LawFit | None:
    """One form fitted to the bracketed optima, or None (with a note) when they cannot
    support it. Replicated inputs count once (the fitter merges them)."""
    fm = FORMS[key]
    ok = (
        ~(best["lr_edge"] | best["lr_extrapolated"])
        if key == "lr"
        else ~(best["B_edge"] | best["B_extrapolated"])
    )
    data = best[ok & np.isfinite(best[TARGET[key]])]
    distinct = len(data[list(fm.inputs)].drop_duplicates())
    spread = [x for x in fm.inputs if data[x].nunique() < 2]
    if distinct < fm.min_points or spread:
        why = f"{distinct} distinct bracketed optima" + (
            f", no spread in {spread}" if spread else ""
        )
        notes.append(
            f"{fm.name} not fitted: {why}; it needs >= {fm.min_points} points varying in "
            f"{list(fm.inputs)}"
        )
        return None
    ref = {x: float(np.exp(np.log(data[x].astype(float)).mean())) for x in fm.inputs}
    scaled = {x: data[x].to_numpy(float) / ref[x] for x in fm.inputs}
    scaled[TARGET[key]] = data[TARGET[key]].to_numpy(float)
    method, note = posterior_method(method, fm, distinct)
    if note:
        notes.append(note)
    res = F.fit(
        scaled,
        fm,
        method=method,
        target=TARGET[key],
        priors={"sigma": SIGMA_PRIOR},
        seed=seed,
        quiet=True,
        **fit_kw,
    )
    if not res.ok:
        notes.append(f"{fm.name}: sampler diagnostics failed ({'; '.join(res.problems)})")
    return LawFit(key, res, ref, method)


def run_points(
    results: str | Path | tuple[pd.DataFrame, pd.DataFrame], extra: dict[str, str] | None = None
) -> pd.DataFrame:
    """Finished and diverged runs as points (N, D, B tokens, lr, loss = inf if diverged, run_id),
    plus `extra` {column: runs-table column}."""
    runs, _ = results if isinstance(results, tuple) else results_lib.load(results)
    need = ["train.lr", *(extra or {}).values()]
    if not len(runs) or any(c not in runs for c in need):
        raise ValueError(f"no runs with {' and '.join(need)} under {results}")
    runs = runs[runs["status"].isin(["done", "diverged"])]
    pts = pd.DataFrame(
        {
            "N": runs["n_params_nonembedding"].astype(int),
            "D": runs["planned_tokens"].astype(float),
            "B": (runs["train.batch_size"] * runs["model.context_length"]).astype(int),
            "lr": runs["train.lr"].astype(float),
            **{k: runs[c].astype(float) for k, c in (extra or {}).items()},
            "loss": runs["loss"].astype(float).where(runs["status"] != "diverged", np.inf),
            "run_id": runs["run_id"],
        }
    )
    return pts


def analyse(results: str | Path | tuple[pd.DataFrame, pd.DataFrame], **kw: Any) -> StepLawStudy:
    """Step Law study of a results directory or (runs_df, curves_df): final eval loss per run
    against train.lr, tokens per step and (N, D)."""
    return analyse_points(run_points(results), **kw)


# --- planted landscapes (tests, notebooks) ----------------------------------------------------


@dataclass(frozen=True)
class PlantedLandscape:
    """A loss surface over (η, B) per (N, D) with known optima (log10 distances):
    L = E + A N^-α + C D^-β + k_lr (lg η - lg η*)² + k_B (lg B - lg B*)² + noise, with
    η* = lr_coef N^lr_exp_N D^lr_exp_D and B* = b_coef N^b_exp_N D^b_exp_D (Step Law's form,
    its constants by default)."""

    lr_coef: float = 1.79
    lr_exp_N: float = -0.713
    lr_exp_D: float = 0.307
    b_coef: float = 0.58
    b_exp_N: float = 0.0
    b_exp_D: float = 0.571
    k_lr: float = 0.08
    k_b: float = 0.04
    noise: float = 0.002
    E: float = 1.8
    A: float = 400.0
    alpha: float = 0.34
    C: float = 400.0
    beta: float = 0.28

    def lr_opt(self, N: Any, D: Any) -> Any:
        return (
            self.lr_coef
            * np.asarray(N, float) ** self.lr_exp_N
            * np.asarray(D, float) ** self.lr_exp_D
        )

    def b_opt(self, N: Any, D: Any) -> Any:
        return (
            self.b_coef
            * np.asarray(N, float) ** self.b_exp_N
            * np.asarray(D, float) ** self.b_exp_D
        )

    def loss(self, N: Any, D: Any, lr: Any, B: Any) -> Any:
        N, D = np.asarray(N, float), np.asarray(D, float)
        u = np.log10(lr) - np.log10(self.lr_opt(N, D))
        v = np.log10(B) - np.log10(self.b_opt(N, D))
        return (
            self.E
            + self.A * N**-self.alpha
            + self.C * D**-self.beta
            + self.k_lr * u**2
            + self.k_b * v**2
        )

    def points(
        self,
        Ns: Sequence[float],
        Ds: Sequence[float],
        *,
        lr_factors: Sequence[float] = tuple(2.0 ** np.arange(-3, 4)),
        b_factors: Sequence[float] = tuple(2.0 ** np.arange(-2, 3)),
        offset: float = 0.3,
        seed: int = 0,
    ) -> pd.DataFrame:
        """A grid over N × D × B × η: B and η at factors of the optimum shifted by `offset`
        octaves (so the truth never sits on a grid point), loss with Gaussian noise."""
        rng = np.random.default_rng(seed)
        rows = []
        for N in Ns:
            for D in Ds:
                for fb in b_factors:
                    B = float(self.b_opt(N, D)) * fb * 2**offset
                    for fl in lr_factors:
                        lr = float(self.lr_opt(N, D)) * fl * 2**offset
                        L = float(self.loss(N, D, lr, B)) + self.noise * rng.standard_normal()
                        rows.append({"N": N, "D": D, "B": B, "lr": lr, "loss": L})
        return pd.DataFrame(rows)


# --- report -----------------------------------------------------------------------------------


def _describe(st: StepLawStudy) -> str:
    lines = [
        "Step Law study (N non-embedding params, D tokens, B tokens/step; "
        f"{LEVEL:.0%} posterior intervals, method {st.method}):",
        "  best (η, B) per (N, D):",
    ]
    pred = st.predictions()
    for _, r in pred.iterrows():
        if r["n_batches"] < 3:
            b = f"B={r['B']:.0f} ({r['n_batches']} batch size(s): no B_opt)"
        elif r["B_edge"]:
            b = f"B_opt not bracketed (best B {r['B']:.0f})"
        elif r["B_extrapolated"]:
            b = (
                f"B_opt EXTRAPOLATED ({r['B_opt']:.3g} outside the batches its parabola used, "
                f"{r['B_fit_lo']:.0f}..{r['B_fit_hi']:.0f}; best B {r['B']:.0f})"
            )
        else:
            b = f"B_opt={r['B_opt']:.3g} (log10 SE {r['log10_B_opt_se']:.2f})"
        if r["lr_edge"]:
            eta = f"η_opt not bracketed (best grid LR {r['best_lr']:.3g})"
        elif r["lr_extrapolated"]:
            eta = (
                f"η_opt EXTRAPOLATED ({r['lr_opt']:.3g} outside the LRs its parabola used, "
                f"{r['lr_fit_lo']:.3g}..{r['lr_fit_hi']:.3g}; best grid LR {r['best_lr']:.3g})"
            )
        else:
            eta = (
                f"η_opt={r['lr_opt']:.3g} (log10 SE {r['log10_lr_opt_se']:.2f}); "
                f"Step Law ×{r['lr_step_law'] / r['lr_opt']:.2g}"
            )
        lines.append(
            f"    N={r['N']:>10,} D={r['D']:.3g}: {eta}, {b}, loss {r['loss']:.4f}; "
            f"Step Law η={r['lr_step_law']:.3g}, B={r['B_step_law']:.3g}"
        )
    t = st.table()
    if len(t):
        lines.append("  fits beside Step Law:")
        for _, r in t.iterrows():
            lines.append(
                f"    {r['law']:<30} {r['param']:>5} = {r['median']:.3g} "
                f"[{r['q5']:.3g}, {r['q95']:.3g}]  Step Law {r['step_law']:.3g}"
                + ("" if r["covers_step_law"] else "  (outside the interval)")
                + ("" if r["method"] == st.method else f"  [{r['method']}]")
            )
    for n in st.notes:
        lines.append(f"  WARNING: {n}")
    return "\n".join(lines)


def _plot(st: StepLawStudy, out: Path) -> list[Path]:
    return _plot_landscapes(st, out) + _plot_laws(st, out)


def _plot_landscapes(st: StepLawStudy, out: Path) -> list[Path]:
    """One panel per (N, D): runs over (η, B) coloured by loss above the panel's minimum, or
    loss vs η when the panel has one batch size; ★ measured optimum, ◇ Step Law, ○ fitted."""
    plt = plotting.pyplot()
    pred = st.predictions()
    ncol = min(4, len(pred))
    nrow = -(-len(pred) // ncol)
    fig, axs = plt.subplots(
        nrow, ncol, figsize=(3.8 * ncol, 3.2 * nrow), squeeze=False, layout="constrained"
    )
    sl = StepLaw()
    sc = None
    for ax, (_, r) in zip(axs.flat, pred.iterrows()):
        N, D = r["N"], r["D"]
        g = st.points[(st.points["N"] == N) & (st.points["D"] == D)].sort_values("lr")
        ok, dv = g[np.isfinite(g["loss"])], g[~np.isfinite(g["loss"])]
        star = (r["best_lr"], "best run (not bracketed)") if r["lr_edge"] else (r["lr_opt"], "")
        marks = [
            (star[0], "*", "k", star[1] or "measured optimum"),
            (sl(N, D, 1.0), "D", "C3", "Step Law"),
        ]
        if math.isfinite(r.get("lr_fit", math.nan)):
            marks.append((r["lr_fit"], "o", "C0", "fitted law (median)"))
        if r["n_batches"] == 1:
            ax.plot(ok["lr"], ok["loss"], "o-", color="0.4", ms=4)
            ax.plot(dv["lr"], np.full(len(dv), ok["loss"].max()), "x", color="red")
            for x, m, c, lab in marks:
                ax.axvline(x, color=c, lw=1, ls="--" if m != "*" else "-", label=lab)
            ax.set(xscale="log", ylabel=f"loss (B = {r['B']:.0f} tokens)")
        else:
            rel = 100 * (ok["loss"] / ok["loss"].min() - 1)
            sc = ax.scatter(ok["lr"], ok["B"], c=np.minimum(rel, 5.0), cmap="viridis_r", s=30)
            ax.plot(dv["lr"], dv["B"], "x", color="red", ms=6)
            b_star = r["B_opt"] if not r["B_edge"] else r["B"]
            b_fit = r.get("B_fit", b_star)
            bs = {"*": b_star, "D": sl.batch(N, D, 1.0), "o": b_fit}
            for x, m, c, lab in marks:
                ax.plot([x], [bs[m]], m, color=c, mfc=c if m == "*" else "none", ms=9, label=lab)
            ax.set(xscale="log", yscale="log", ylabel="B [tokens/step]")
        ax.set_title(f"N={N:.3g}, D={D:.3g}", fontsize=9)
        ax.set_xlabel("peak LR η")
        ax.tick_params(labelsize=7)
    for ax in list(axs.flat)[len(pred) :]:
        ax.set_visible(False)
    if sc is not None:
        fig.colorbar(sc, ax=axs, shrink=0.6, label="loss above the (N, D) minimum [%] (cap 5)")
    axs.flat[0].legend(fontsize=6)
    return plotting.save_figure(fig, out / "step_law_landscape")


def _plot_laws(st: StepLawStudy, out: Path) -> list[Path]:
    """η_opt vs N per D (fit median per D, its 90% band at the middle D; Step Law dotted) and
    B_opt vs D (fit with band; Step Law dotted), bracketed optima with 90% error bars."""
    plt = plotting.pyplot()
    pred = st.predictions()
    sl = StepLaw()
    Ns, Ds = sorted(pred["N"].unique()), sorted(pred["D"].unique())
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    ok = pred[~pred["lr_edge"] & ~pred["lr_extrapolated"]]
    ns = np.geomspace(min(Ns), max(Ns), 30)
    for j, D in enumerate(Ds):
        o = ok[ok["D"] == D]
        yerr = _errbar(o["lr_opt"], o["log10_lr_opt_se"])
        c = f"C{j % 10}"
        ax.errorbar(o["N"], o["lr_opt"], yerr=yerr, fmt="o", color=c, label=f"D={D:.3g}", capsize=3)
        ax.plot(ns, sl(ns, D, 1.0), ":", color=c, lw=1)
        mid = j == len(Ds) // 2
        _band(ax, st.fits.get("lr"), {"N": ns, "D": np.full_like(ns, D)}, ns, c, band=mid)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="non-embedding parameters N",
        ylabel="η_opt",
        title=f"η_opt(N, D): fit (line; {LEVEL:.0%} band at the middle D), Step Law (dotted)",
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    okb = pred[~pred["B_edge"] & ~pred["B_extrapolated"] & np.isfinite(pred["B_opt"])]
    ds = np.geomspace(min(Ds), max(Ds), 30)
    bx.plot(ds, sl.batch(1.0, ds, 1.0), ":", color="C3", label="Step Law 0.58·D^0.571")
    if len(okb):
        yerr = _errbar(okb["B_opt"], okb["log10_B_opt_se"])
        bx.errorbar(okb["D"], okb["B_opt"], yerr=yerr, fmt="o", color="k", capsize=3, label="B_opt")
    else:
        bx.text(0.5, 0.5, "B_opt not measured\n(fewer than 3 bracketing batch sizes)",
                transform=bx.transAxes, ha="center", fontsize=9)  # fmt: skip
    _band(bx, st.fits.get("batch_D"), {"D": ds}, ds, "C0", label="fit c·D^b")
    bx.set(
        xscale="log",
        yscale="log",
        xlabel="training tokens D",
        ylabel="B_opt [tokens/step]",
        title="B_opt(D)",
    )
    bx.legend(fontsize=7)
    fig.tight_layout()
    return plotting.save_figure(fig, out / "step_law")


def _band(
    ax: Any,
    res: LawFit | None,
    inputs: dict,
    x: np.ndarray,
    color: str,
    label: str = "",
    band: bool = True,
) -> None:
    """A fit's posterior median line and (band=True) 90% band over x; nothing without a fit."""
    if res is None:
        return
    p = res.predict(inputs)
    ax.plot(x, p["q50"], color=color, lw=1.2, label=label or None)
    if band:
        ax.fill_between(x, p["q5"], p["q95"], color=color, alpha=0.15, lw=0)


def _errbar(v: pd.Series, log10_se: pd.Series) -> np.ndarray:
    """90% error bars of values with log10 SEs (zero where the SE is unknown)."""
    se = np.nan_to_num(log10_se.to_numpy(float), nan=0.0)
    half = lr_sensitivity.Z90 * se
    x = v.to_numpy(float)
    return np.stack([x - x / 10**half, x * 10**half - x])
