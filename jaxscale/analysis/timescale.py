"""AdamW timescale: the optimal τ = B/(ηλD) per (N, D) and its power law in tokens per parameter.

Wang & Aitchison 2024 read AdamW's weights as an exponential moving average of recent updates
with timescale 1/(ηλ) steps; as a fraction of the run that is τ = B/(ηλD) (B tokens per step,
D training tokens, η the peak LR, λ the weight decay; RunConfig.adamw_timescale). Bergsma et
al. 2025 ("Power Lines", arXiv 2505.13738) find the optimal τ a power law in tokens per
parameter, τ_opt = c · (D/N)^k. Here, for every (N, D) a parabola in log10 τ through the best
grid point and its neighbours (lr_sensitivity.fit_lr_parabola, the kit's LR-basin fit) gives
τ_opt with a delta-method 90% interval; an optimum at the grid's edge, a parabola that does
not curve up, or a vertex outside the τ the parabola used (EXTRAPOLATED) is flagged and left
out. Seeds repeating a τ all enter the parabola; grid points are compared by mean loss. Runs with λ = 0 (τ = ∞) are the no-decay baseline. The
bracketed optima are fitted with the Bayesian fitter (registered form `timescale_tpp`, log τ =
log c + k log(D/N), priors normal(0, 10) on log c and normal(0, 1) on k, not centred on
Bergsma's values), 90% posterior intervals, beside Bergsma's constants (PUBLISHED).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxscale.analysis import fit as F
from jaxscale.analysis import lr_sensitivity, plotting, step_law
from jaxscale.runs import store

LEVEL = 0.9  # the kit's interval convention
# Laplace never fits the law: on planted laws (seeds 0-39, one N, 4-19 distinct D/N) its 90%
# intervals covered the truth 55-83% of the time at every size tried; NUTS 18-19/20 at 5 D/N.
LAPLACE_MIN_DOF = math.inf
SIGMA_PRIOR = F.Prior("halfnormal", 0.5)  # ln-scale scatter of grid optima: tens of percent
REF = "Bergsma et al. 2025 (Power Lines, arXiv 2505.13738)"
FORM = F.Form(
    name="timescale_tpp",
    inputs=("TPP",),
    priors={"log_coef": F.Prior("normal", 0.0, 10.0), "k": F.Prior("normal", 0.0, 1.0)},
    log_loss=lambda lx, p: p["log_coef"] + p["k"] * lx["TPP"],
    reference=REF,
    description="tau_opt = coef * (D/N)^k",
)
F.register_form(FORM, overwrite=True)

# Bergsma et al. 2025's fit of τ_opt vs tokens per parameter (their models 111M-3.3B, μP).
# Quoted from secondary sources, not read in the paper itself here: the exponent -0.527 from
# two independent summaries, the coefficient 1.084 from one (a training script's comment).
PUBLISHED = {"coef": 1.084, "k": -0.527}
PUBLISHED_SOURCE = (
    "Bergsma et al. 2025 τ_opt = 1.084·TPP^-0.527, as quoted by secondary sources (the paper "
    "itself was not available to check the digits)"
)
CONVENTION = (
    "τ = B/(ηλD): B tokens per step, D planned training tokens, η peak LR, λ weight decay "
    "(multiplied by the LR: p ← p − η_t(u + λp)); TPP = D/N with N non-embedding parameters; "
    f"{LEVEL:.0%} intervals (delta-method t per optimum, posterior for the law)"
)


@dataclass(frozen=True)
class TimescaleFit:
    """The law fitted on TPP divided by its geometric mean `ref`; coef in natural units."""

    result: F.FitResult
    ref: float
    method: str = "nuts"

    def draws(self, param: str) -> np.ndarray:
        """Posterior draws of coef (c · ref^-k back in natural units) or k."""
        k = self.result.flat("k")
        if param == "k":
            return k
        return np.exp(self.result.flat("log_coef") - k * math.log(self.ref))

    def curve(self, tpp: np.ndarray) -> np.ndarray:
        """Draws × len(tpp) of the fitted τ_opt(TPP) (the law alone, no run-to-run noise)."""
        lc = self.result.flat("log_coef")[:, None]
        k = self.result.flat("k")[:, None]
        return np.exp(lc + k * np.log(np.asarray(tpp, float)[None, :] / self.ref))


@dataclass(frozen=True)
class TimescaleStudy:
    """Per-(N, D) τ optima, the no-decay baseline, the τ_opt(D/N) fit and every caveat."""

    points: pd.DataFrame  # N, D, B, lr, wd, loss, tau (inf for λ = 0), diverged
    optima: pd.DataFrame  # per (N, D): tau_opt, interval, edge, loss_opt, loss_no_decay, ...
    fits: dict[tuple[int, float], lr_sensitivity.LRFit]
    law: TimescaleFit | None
    notes: tuple[str, ...] = ()
    method: str = "nuts"

    def table(self) -> pd.DataFrame:
        """The law's parameters: median and 90% interval beside Bergsma et al.'s values."""
        if self.law is None:
            return pd.DataFrame(columns=["param", "median", "q5", "q95", "bergsma"])
        rows = []
        for p, pub in PUBLISHED.items():
            q5, q50, q95 = np.quantile(self.law.draws(p), [0.05, 0.5, 0.95])
            rows.append(
                {
                    "param": p,
                    "median": q50,
                    "q5": q5,
                    "q95": q95,
                    "bergsma": pub,
                    "covers_bergsma": bool(q5 <= pub <= q95),
                }
            )
        return pd.DataFrame(rows)

    def describe(self) -> str:
        """Readable summary: τ_opt per (N, D) with intervals, the law beside Bergsma, caveats."""
        return _describe(self)

    def plot(self, out_dir: str | Path) -> list[Path]:
        """Loss vs τ per (N, D) and τ_opt vs D/N with both laws: timescale.png/.svg."""
        return _plot(self, Path(out_dir))

    def to_dict(self) -> dict[str, Any]:
        return {
            "convention": CONVENTION,
            "published": PUBLISHED | {"source": PUBLISHED_SOURCE},
            "method": self.method,
            "notes": list(self.notes),
            "table": _records(self.table()),
            "optima": _records(self.optima),
            "points": _records(self.points.replace([np.inf], np.nan)),
            "fit": None
            if self.law is None
            else {
                "ok": self.law.result.ok,
                "problems": self.law.result.problems,
                "method": self.law.method,
            },
        }

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write timescale.json (every number), timescale_optima.csv and the plot."""
        out = Path(out_dir)
        store.write_json_atomic(out / "timescale.json", self.to_dict())
        self.optima.to_csv(out / "timescale_optima.csv", index=False)
        return [out / "timescale.json", out / "timescale_optima.csv", *self.plot(out)]


def _records(df: pd.DataFrame) -> list[dict]:
    return json.loads(df.to_json(orient="records"))


def adamw_timescale(B: Any, lr: Any, wd: Any, D: Any) -> Any:
    """τ = B/(ηλD) elementwise (Wang & Aitchison 2024; Bergsma et al. 2025); inf where λ = 0."""
    B, lr, wd, D = (np.asarray(v, float) for v in (B, lr, wd, D))
    with np.errstate(divide="ignore"):
        return B / (lr * wd * D)


def analyse_points(
    points: pd.DataFrame,
    *,
    method: str = "nuts",
    half_window: int = 2,
    seed: int = 0,
    **fit_kw: Any,
) -> TimescaleStudy:
    """Timescale study of a table with columns N, D, B (tokens/step), lr (peak), wd, loss
    (inf/NaN = diverged); fit_kw go to analysis.fit.fit (e.g. chains, warmup, draws)."""
    need = {"N", "D", "B", "lr", "wd", "loss"}
    if not need <= set(points.columns):
        raise ValueError(
            f"timescale points need columns {sorted(need)}, have {list(points.columns)}"
        )
    pts = points.copy()
    pts["loss"] = pts["loss"].astype(float)
    pts["tau"] = adamw_timescale(pts["B"], pts["lr"], pts["wd"], pts["D"])
    pts["diverged"] = ~np.isfinite(pts["loss"])
    notes: list[str] = []
    rows, fits = [], {}
    for (N, D), g in pts.groupby(["N", "D"], sort=True):
        row, f = _optimum(int(N), float(D), g, half_window, notes)
        rows.append(row)
        if f is not None:
            fits[(int(N), float(D))] = f
    if not rows:
        raise ValueError("no (N, D) group in the points")
    optima = pd.DataFrame(rows)
    n_edge = int(optima["edge"].sum())
    if n_edge:
        notes.append(
            f"{n_edge} of {len(optima)} (N, D) have τ_opt at the τ grid's edge, beaten by no "
            "decay, without a curved basin, or EXTRAPOLATED (vertex outside the τ its parabola "
            "used): not reported as numbers, left out of the fit"
        )
    n_wide = int((~optima["edge"] & ~optima["identified"]).sum())
    if n_wide:
        notes.append(
            f"{n_wide} of {len(optima)} (N, D) have a 90% interval wider than the τ grid: "
            "shown with it, left out of the fit; more seeds or a denser grid would pin them"
        )
    law = _fit(optima, method, seed, notes, fit_kw)
    return TimescaleStudy(pts, optima, fits, law, tuple(notes), method)


def _optimum(
    N: int, D: float, g: pd.DataFrame, half_window: int, notes: list[str]
) -> tuple[dict[str, Any], lr_sensitivity.LRFit | None]:
    """τ_opt of one (N, D): parabola in log10 τ over finite-τ finished runs, edge check, and
    the no-decay baseline."""
    ok = g[~g["diverged"]]
    dec = ok[np.isfinite(ok["tau"])]
    base = ok[~np.isfinite(ok["tau"])]
    # Seeds repeat a τ: compare grid points by their mean loss, fit the parabola on every run.
    mean_T = dec.groupby("tau")["loss"].mean()
    row: dict[str, Any] = {
        "N": N,
        "D": D,
        "TPP": D / N,
        "n_taus": int(mean_T.size),
        "n_runs": int(len(dec)),
        "n_diverged": int(g["diverged"].sum()),
        "B": float(g["B"].iloc[0]),
        "lr": float(g["lr"].iloc[0]),
        "tau_opt": math.nan,
        "tau_lo": math.nan,
        "tau_hi": math.nan,
        "log10_tau_opt": math.nan,
        "log10_tau_opt_se": math.nan,
        "best_tau": math.nan,
        "best_loss": math.nan,
        "loss_opt": math.nan,
        "loss_no_decay": float(base["loss"].mean()) if len(base) else math.nan,
        "n_no_decay": int(len(base)),
        "grid_lo": float(dec["tau"].min()) if len(dec) else math.nan,
        "grid_hi": float(dec["tau"].max()) if len(dec) else math.nan,
        "fit_lo": math.nan,
        "fit_hi": math.nan,
        "edge": True,
        "identified": False,
        "why": "",
    }
    if g["B"].nunique() > 1 or g["lr"].nunique() > 1:
        row["why"] = "several (η, B) in one (N, D): τ_opt pools them"
    if row["n_taus"] < 3:
        row["why"] = f"{row['n_taus']} finished finite τ (need >= 3)"
        notes.append(f"N={N:,} D={D:.3g}: no τ optimum ({row['why']})")
        return row, None
    f = lr_sensitivity.fit_lr_parabola(dec["tau"], dec["loss"], half_window)
    best_tau, best_loss = float(mean_T.idxmin()), float(mean_T.min())
    xs = np.log10(mean_T.index.to_numpy(float))
    at_end = best_tau in (mean_T.index.min(), mean_T.index.max())
    lo, hi = f.vertex_interval(LEVEL)
    # λ = 0 is the grid's far end (τ = ∞): if it beats every λ, the optimum is not bracketed.
    no_decay_best = bool(len(base)) and row["loss_no_decay"] < best_loss
    row |= {
        "best_tau": best_tau,
        "best_loss": best_loss,
        "edge": bool(at_end or f.extrapolated or not f.a > 0 or no_decay_best),
        "log10_tau_opt": f.vertex,
        "log10_tau_opt_se": f.vertex_se,
        "loss_opt": f.min_loss,
        "fit_lo": 10**f.lo,
        "fit_hi": 10**f.hi,
    }
    if no_decay_best:
        row["why"] = (
            f"no decay (λ = 0, loss {row['loss_no_decay']:.4f}) beat every λ in the grid "
            "(τ_opt may be ∞: decay does not help here)"
        )
    elif at_end:
        side = "largest" if best_tau == mean_T.index.max() else "smallest"
        row["why"] = f"best τ {best_tau:.3g} is the grid's {side}"
    elif f.extrapolated:
        row["why"] = (
            f"EXTRAPOLATED: the parabola's vertex τ {10**f.vertex:.3g} lies outside the τ it "
            f"was fitted on ({10**f.lo:.3g}..{10**f.hi:.3g})"
        )
    elif row["edge"]:
        row["why"] = "the parabola does not curve up (a flat basin within noise)"
    else:
        row |= {"tau_opt": 10**f.vertex, "tau_lo": 10**lo, "tau_hi": 10**hi}
        # An interval reaching past the grid says the basin is too flat for its noise.
        row["identified"] = bool(xs.min() <= lo and hi <= xs.max())
        if not row["identified"]:
            row["why"] = "90% interval wider than the τ grid: not identified, left out of the fit"
    return row, f


def _fit(
    optima: pd.DataFrame,
    method: str,
    seed: int,
    notes: list[str],
    fit_kw: Mapping[str, Any],
) -> TimescaleFit | None:
    """τ_opt = c · TPP^k on the bracketed optima, or None (with a note) if they cannot carry it."""
    data = optima[~optima["edge"] & optima["identified"] & np.isfinite(optima["tau_opt"])]
    distinct = int(data["TPP"].nunique())
    if distinct < FORM.min_points:
        notes.append(
            f"{FORM.name} not fitted: {distinct} distinct bracketed (N, D) optima; it needs "
            f">= {FORM.min_points} points varying in D/N"
        )
        return None
    ref = float(np.exp(np.log(data["TPP"].astype(float)).mean()))
    used, note = step_law.posterior_method(method, FORM, distinct, LAPLACE_MIN_DOF)
    if note:
        notes.append(note)
    res = F.fit(
        {"TPP": data["TPP"].to_numpy(float) / ref, "tau_opt": data["tau_opt"].to_numpy(float)},
        FORM,
        target="tau_opt",
        method=used,
        priors={"sigma": SIGMA_PRIOR},
        seed=seed,
        quiet=True,
        **fit_kw,
    )
    if not res.ok:
        notes.append(f"{FORM.name}: sampler diagnostics failed ({'; '.join(res.problems)})")
    notes.extend(f"{FORM.name}: {c}" for c in res.caveats)
    decades = math.log10(data["TPP"].max() / data["TPP"].min())
    if decades < 1:
        notes.append(
            f"the bracketed optima span {decades:.2f} decades of D/N: the exponent k is "
            "poorly constrained; add sizes or token counts"
        )
    return TimescaleFit(res, ref, used)


def analyse(results: str | Path | tuple[pd.DataFrame, pd.DataFrame], **kw: Any) -> TimescaleStudy:
    """Timescale study of a results directory or (runs_df, curves_df): final eval loss per run
    against train.weight_decay, train.lr, tokens per step and (N, D)."""
    pts = step_law.run_points(results, extra={"wd": "train.weight_decay"})
    return analyse_points(pts, **kw)


# --- planted landscapes (tests, notebooks) ----------------------------------------------------


@dataclass(frozen=True)
class PlantedTimescale:
    """loss = L(N, D) + curv·(log10 τ − log10 τ_opt)² + noise, τ_opt = coef·(D/N)^k."""

    coef: float = PUBLISHED["coef"]
    k: float = PUBLISHED["k"]
    curv: float = 0.05  # nats per decade² of τ
    noise: float = 0.003  # nats, per run

    def tau_opt(self, N: Any, D: Any) -> Any:
        return self.coef * (np.asarray(D, float) / np.asarray(N, float)) ** self.k

    def loss(self, N: Any, D: Any, tau: Any) -> Any:
        """Noise-free loss of a run at timescale τ (a Chinchilla-like L(N, D) plus the basin)."""
        N, D = np.asarray(N, float), np.asarray(D, float)
        miss_dec = np.log10(np.asarray(tau, float) / self.tau_opt(N, D))
        return 2 + 50 * N**-0.3 + 300 * D**-0.3 + self.curv * miss_dec**2

    def points(
        self,
        Ns: Any,
        Ds: Any,
        *,
        tau_factors: Any = tuple(4.0 ** np.arange(-2, 3)),
        lr: float = 1e-3,
        B: float = 2**14,
        seed: int = 0,
    ) -> pd.DataFrame:
        """One run per (N, D, τ factor around the planted τ_opt), with λ = B/(η τ D)."""
        rng = np.random.default_rng(seed)
        rows = []
        for N in Ns:
            for D in Ds:
                for fct in tau_factors:
                    tau = float(self.tau_opt(N, D)) * fct
                    loss = float(self.loss(N, D, tau)) + rng.normal(0, self.noise)
                    wd = B / (lr * tau * D)
                    rows.append({"N": N, "D": D, "B": B, "lr": lr, "wd": wd, "loss": loss})
        return pd.DataFrame(rows)


# --- text and plots ---------------------------------------------------------------------------


def _describe(st: TimescaleStudy) -> str:
    lines = [
        "AdamW timescale (Wang & Aitchison 2024; Bergsma et al. 2025): " + CONVENTION + ".",
        "τ_opt per (N, D) (parabola in log10 τ over the best grid point ± neighbours), beside "
        + PUBLISHED_SOURCE
        + ":",
    ]
    for _, r in st.optima.iterrows():
        pub = PUBLISHED["coef"] * r["TPP"] ** PUBLISHED["k"]
        head = f"  N={r['N']:>9,} D={r['D']:.3g} D/N={r['TPP']:.3g} (Bergsma τ {pub:.3g}): "
        base = f"; no decay {r['loss_no_decay']:.4f}" if math.isfinite(r["loss_no_decay"]) else ""
        if r["edge"]:
            lines.append(
                head + f"τ_opt not bracketed ({r['why']}; grid {r['grid_lo']:.3g}..."
                f"{r['grid_hi']:.3g}); best run τ={r['best_tau']:.3g} loss {r['best_loss']:.4f}"
                + base
            )
            continue
        lam = r["B"] / (r["lr"] * r["tau_opt"] * r["D"])
        lines.append(
            head + f"τ_opt={r['tau_opt']:.3g} [{r['tau_lo']:.3g}, {r['tau_hi']:.3g}] (90%), "
            f"i.e. λ={lam:.3g} at η={r['lr']:.3g}; loss {r['loss_opt']:.4f}"
            + base
            + ("" if r["identified"] else f"  [WARNING: {r['why']}]")
        )
    t = st.table()
    if st.law is not None:
        lines.append(
            f"τ_opt = c·(D/N)^k on {len(st.law.result.loss)} distinct D/N (bracketed, "
            "identified optima) "
            f"[{st.law.method}, 90% posterior] beside {PUBLISHED_SOURCE}:"
        )
        for _, r in t.iterrows():
            verdict = "covers" if r["covers_bergsma"] else "outside the interval:"
            lines.append(
                f"  {r['param']:>4} = {r['median']:.3g} [{r['q5']:.3g}, {r['q95']:.3g}]; "
                f"Bergsma {r['bergsma']:g} ({verdict} theirs)"
            )
        if st.optima["N"].max() < 1e8:
            lines.append(
                "  N here is far below Bergsma's 111M-3.3B: a mismatch tests the law's transfer "
                "to small scale, not the law at its scale"
            )
    lines += [f"note: {n}" for n in st.notes]
    return "\n".join(lines)


def _plot(st: TimescaleStudy, out: Path) -> list[Path]:
    plt = plotting.pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    cells = list(st.optima[["N", "D"]].itertuples(index=False, name=None))
    cmap = plt.get_cmap("viridis")
    for i, (N, D) in enumerate(cells):
        c = cmap(i / max(len(cells) - 1, 1))
        g = st.points[(st.points["N"] == N) & (st.points["D"] == D) & ~st.points["diverged"]]
        g = g[np.isfinite(g["tau"])].sort_values("tau")
        ax.plot(g["tau"], g["loss"], "o", ms=4, color=c, label=f"N={N:.3g} D/N={D / N:.3g}")
        f = st.fits.get((int(N), float(D)))
        if f is not None:
            xs = np.linspace(f.lo, f.hi, 50)
            ax.plot(10**xs, f(xs), "-", color=c, lw=1)
    ax.set(
        xscale="log",
        xlabel="AdamW timescale τ = B/(ηλD)",
        ylabel="final eval loss [nats/token]",
        title="loss vs τ per (N, D) (parabola in log τ)",
    )
    ax.legend(fontsize=6)
    o = st.optima
    for ident, fmt, label in ((True, "o", "τ_opt (90%)"), (False, "o", "not identified")):
        ok = o[~o["edge"] & (o["identified"] == ident)]
        if len(ok):
            bx.errorbar(
                ok["TPP"],
                ok["tau_opt"],
                yerr=[ok["tau_opt"] - ok["tau_lo"], ok["tau_hi"] - ok["tau_opt"]],
                fmt=fmt,
                mfc="C0" if ident else "none",
                color="C0",
                capsize=3,
                label=label,
            )
    e = o[o["edge"] & np.isfinite(o["best_tau"])]
    if len(e):
        bx.plot(
            e["TPP"],
            e["best_tau"],
            "x",
            color="C3",
            label="not bracketed: best finite τ (edge or beaten by λ = 0)",
        )
    tpp = np.geomspace(o["TPP"].min() / 2, o["TPP"].max() * 2, 40)
    if st.law is not None:
        plotting.quantile_band(bx, tpp, st.law.curve(tpp), color="C0", label="fit, 90% band")
    bx.plot(tpp, PUBLISHED["coef"] * tpp ** PUBLISHED["k"], "k--", lw=1, label="Bergsma 2025")
    bx.set(
        xscale="log",
        yscale="log",
        xlabel="tokens per parameter D/N (N non-embedding)",
        ylabel="optimal τ",
        title="τ_opt vs D/N",
    )
    bx.legend(fontsize=7)
    fig.tight_layout()
    return plotting.save_figure(fig, out / "timescale")
