"""Fit results: FitResult (table, describe, plot, save), prediction, compute-optimal allocation,
comparison of fits. Every interval is a central 90% interval (q5-q95), the kit's convention."""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from jaxscale.analysis import plotting
from jaxscale.analysis.fit import extrapolation as X
from jaxscale.analysis.fit.forms import get_form

CHINCHILLA_PARAMS = frozenset({"alpha", "beta", "log_A", "log_B"})
INTERVAL = "90% central interval [q5, q95]"
PREDICTIVE_DRAWS = 4000  # at least this many noise draws behind each predictive band
# Diagnostics written to summary.json (per-draw arrays and covariances stay in the npz/netCDF).
SAVED_DIAGNOSTICS = (
    "max_r_hat",
    "min_ess",
    "divergences",
    "chains",
    "draws",
    "mean_tree_steps",
    "mean_accept",
    "n_boot",
    "grid_points",
    "replicates",
    "prior_sensitivity",
    "extended",
)


@dataclass(frozen=True)
class FitResult:
    """Posterior (or point/bootstrap) draws of one form on one dataset, with diagnostics."""

    form: str
    method: str
    samples: dict[str, np.ndarray]  # name -> (chains, draws)
    inputs: dict[str, np.ndarray]
    loss: np.ndarray
    priors: dict[str, str]
    noise: str
    df: float
    diagnostics: dict[str, Any] = field(default_factory=dict)
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    point: dict[str, float] = field(default_factory=dict)  # MAP / Huber optimum
    seconds: float = 0.0
    log_lik: np.ndarray | None = None  # (chains, draws, n) for LOO/WAIC
    # what the data cannot tell (prior-dominated parameters, aggregated replicates), one line each
    caveats: list[str] = field(default_factory=list)
    discrepancy: X.Discrepancy = X.DEFAULT_DISCREPANCY  # widens predictions beyond the data

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(self.samples)

    def flat(self, name: str) -> np.ndarray:
        """All draws of one quantity, chains concatenated."""
        return np.asarray(self.samples[name]).reshape(-1)

    def table(self) -> pd.DataFrame:
        """Mean, median, 90% interval (q5, q95), sd, R-hat, bulk/tail ESS and prior sensitivity."""
        rows = {}
        shift = self.diagnostics.get("prior_sensitivity", {})
        for n, v in self.samples.items():
            f = np.asarray(v, dtype=np.float64).reshape(-1)
            d = self.diagnostics.get("per_param", {}).get(n, {})
            rows[n] = {
                "mean": f.mean(),
                "median": np.median(f),
                "q5": np.quantile(f, 0.05),
                "q95": np.quantile(f, 0.95),
                "sd": f.std(),
                "r_hat": d.get("r_hat", np.nan),
                "ess_bulk": d.get("ess_bulk", np.nan),
                "ess_tail": d.get("ess_tail", np.nan),
                "prior_shift": shift.get(n, shift.get(f"log_{n}", np.nan)),
            }
        return pd.DataFrame.from_dict(rows, orient="index")

    def describe(self) -> str:
        """Form, method, data, interval convention, parameter table, caveats and problems."""
        with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 120):
            lines = [
                f"{self.form} [{self.method}] on {self.loss.size} points in {self.seconds:.1f} s; "
                f"intervals: {INTERVAL}; prior_shift: how far halving/doubling the prior moves "
                "the interval, as a share of its width",
                self.table().to_string(float_format="{:.4g}".format),
                *(f"caveat: {c}" for c in self.caveats),
                *(
                    [f"sampler: {self.diagnostics['extended']} (the first run mixed too slowly)"]
                    if "extended" in self.diagnostics
                    else []
                ),
                *(f"DIAGNOSTICS FAILED: {p}" for p in self.problems),
            ]
        return "\n".join(lines)

    def to_inference_data(self) -> Any:
        """arviz InferenceData (posterior, log_likelihood, sample_stats, observed_data)."""
        import arviz as az  # lazy: arviz is slow to import

        ll = None if self.log_lik is None else {"obs": self.log_lik}
        stats = {}
        if "divergences_per_draw" in self.diagnostics:
            stats["diverging"] = np.asarray(self.diagnostics["divergences_per_draw"])
        with warnings.catch_warnings():
            # arviz 0.2x announces its 1.0 API change on every call; nothing here to act on
            warnings.simplefilter("ignore", FutureWarning)
            return az.from_dict(
                posterior={k: np.asarray(v) for k, v in self.samples.items()},
                log_likelihood=ll,
                sample_stats=stats or None,
                observed_data={"log_loss": np.log(self.loss)},
            )

    def save(
        self, out_dir: str | Path, *, target_compute: float | None = None, plots: bool = True
    ) -> list[Path]:
        """Write summary (JSON + CSV), samples (npz), posterior (netCDF) and plots to out_dir."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        table = self.table()
        info: dict[str, Any] = {
            "form": self.form,
            "method": self.method,
            "reference": get_form(self.form).reference,
            "n_points": int(self.loss.size),
            "noise": self.noise,
            "df": self.df,
            "priors": self.priors,
            "ok": self.ok,
            "problems": self.problems,
            "caveats": self.caveats,
            "intervals": INTERVAL,
            "discrepancy": {
                "a": self.discrepancy.a,
                "tau_per_decade": self.discrepancy.tau,
                "source": self.discrepancy.source,
                "held_out_points": self.discrepancy.n_points,
            },
            "seconds": self.seconds,
            "point": self.point,
            "diagnostics": {k: v for k, v in self.diagnostics.items() if k in SAVED_DIAGNOSTICS},
            "summary": json.loads(table.to_json(orient="index")),
        }
        if target_compute is not None and CHINCHILLA_PARAMS <= set(self.samples):
            info["optimal"] = {"C": target_compute, **optimal_summary(self, target_compute)}
        paths = [out / "summary.json", out / "summary.csv", out / "samples.npz"]
        paths[0].write_text(json.dumps(info, indent=2, default=float))
        table.to_csv(paths[1])
        np.savez(
            paths[2],
            **self.samples,
            **{f"input_{k}": v for k, v in self.inputs.items()},
            loss=self.loss,
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.to_inference_data().to_netcdf(str(out / "posterior.nc"))
            paths.append(out / "posterior.nc")
        except Exception as e:  # netCDF backend missing: keep the other outputs
            warnings.warn(f"netCDF not written ({e}); install netCDF4 or h5netcdf", stacklevel=2)
        if plots:
            paths += self.plot(out, target_compute=target_compute)
        return paths

    def plot(self, out_dir: str | Path, *, target_compute: float | None = None) -> list[Path]:
        """Data + extrapolated posterior-predictive bands, exponent pairs, N_opt(C) band."""
        plt = plotting.pyplot()
        out_dir = Path(out_dir)
        fm = get_form(self.form)
        paths: list[Path] = []

        fig, ax = plt.subplots(figsize=(6, 4.2))
        x = self.inputs
        if set(fm.inputs) == {"N", "D"}:
            C = 6 * x["N"] * x["D"]
            edges = np.unique(np.round(np.log10(C), 1))
            cmax = C.max()
            levels = list(10 ** edges[:: max(1, len(edges) // 6)]) + [10 * cmax, 100 * cmax]
            sc = ax.scatter(x["N"], self.loss, c=np.log10(C), s=8, cmap="viridis")
            fig.colorbar(sc, ax=ax, label="log10 C = 6ND")
            lowest = self.loss.min()
            for c in levels:
                Ng = np.geomspace(x["N"].min() / 3, x["N"].max() * 30, 60)
                pr = predict(self, {"N": Ng, "D": c / (6 * Ng)})
                ext = c > cmax
                ax.plot(Ng, pr["q50"], "--" if ext else "-", lw=1, color="k" if ext else "0.4")
                ax.fill_between(Ng, pr["q5"], pr["q95"], alpha=0.25 if ext else 0.15, lw=0)
                ax.fill_between(Ng, pr["q25"], pr["q75"], alpha=0.25 if ext else 0.15, lw=0)
                lowest = min(lowest, pr["q50"].min())
            ax.set_xlabel("N (parameters)")
            # frame the data and the extrapolated medians; wide bands may run off the frame
            ax.set_ylim(lowest * 0.85, np.quantile(self.loss, 0.98) * 1.15)
        else:
            xn = fm.inputs[-1]
            others = [k for k in fm.inputs if k != xn]
            groups = [np.ones_like(self.loss, bool)]
            if others:
                o = x[others[0]]
                uo = np.unique(o)
                sel = (
                    uo if uo.size <= 6 else np.quantile(uo, np.linspace(0, 1, 6), method="nearest")
                )
                groups = [o == u for u in np.unique(sel)]
            ax.scatter(x[xn], self.loss, s=8, color="k")
            xg = np.geomspace(x[xn].min(), x[xn].max() * 100, 80)
            for g in groups:
                pr = predict(self, {xn: xg, **{k: np.median(x[k][g]) for k in others}})
                ax.plot(xg, pr["q50"], lw=1)
                ax.fill_between(xg, pr["q5"], pr["q95"], alpha=0.15, lw=0)
                ax.fill_between(xg, pr["q25"], pr["q75"], alpha=0.25, lw=0)
            ax.axvline(x[xn].max(), color="0.6", lw=0.8, ls=":")
            ax.set_xlabel(xn)
        plotting.log_axes(ax)
        ax.set_ylabel("loss")
        ax.set_title(
            f"{fm.name}: {fm.description} ({self.method}; posterior predictive 50/90% bands, "
            "with noise and model discrepancy)",
            fontsize=8,
        )
        paths += plotting.save_figure(fig, out_dir / "fit_data")

        expo = [k for k in fm.params if not k.startswith("log_")]
        if len(expo) >= 2:
            k = len(expo)
            fig, axs = plt.subplots(
                k - 1, k - 1, figsize=(2.6 * (k - 1), 2.6 * (k - 1)), squeeze=False
            )
            for i in range(1, k):
                for j in range(k - 1):
                    a = axs[i - 1, j]
                    if j >= i:
                        a.axis("off")
                        continue
                    a.scatter(self.flat(expo[j]), self.flat(expo[i]), s=1, alpha=0.2)
                    a.set_xlabel(expo[j])
                    a.set_ylabel(expo[i])
            paths += plotting.save_figure(fig, out_dir / "exponents_pair")

        if CHINCHILLA_PARAMS <= set(self.samples) and set(fm.inputs) == {"N", "D"}:
            C_obs = 6 * x["N"] * x["D"]
            Cg = np.geomspace(C_obs.min(), max(C_obs.max() * 100, target_compute or 0), 50)
            No = compute_optimal(self, Cg)["N_opt"]
            fig, ax = plt.subplots(figsize=(5, 3.8))
            q = np.quantile(No, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
            ax.plot(Cg, q[2], color="C0")
            ax.fill_between(Cg, q[0], q[4], alpha=0.2, lw=0, color="C0", label="90%")
            ax.fill_between(Cg, q[1], q[3], alpha=0.35, lw=0, color="C0", label="50%")
            if target_compute:
                ax.axvline(target_compute, color="0.5", ls=":", lw=0.8)
            plotting.log_axes(ax)
            ax.set_xlabel("C (FLOP)")
            ax.set_ylabel("N_opt")
            ax.legend()
            ax.set_title(
                "compute-optimal N (Hoffmann 2022 App. D; C = 6ND; bands 50/90%)", fontsize=9
            )
            paths += plotting.save_figure(fig, out_dir / "n_opt")
        return paths


@functools.lru_cache(maxsize=32)
def _log_loss_program(form: str) -> Any:
    return jax.jit(get_form(form).log_loss)


def mean_log_loss(form: str, samples: Mapping[str, Any], x: Mapping[str, Any]) -> np.ndarray:
    """Form mean of log loss per draw at inputs x: (chains, draws, n)."""
    fm = get_form(form)
    shape = np.shape(samples[fm.params[0]])
    n = np.asarray(next(iter(x.values()))).size
    with jax.enable_x64(True):
        lx = {k: np.log(np.asarray(x[k], np.float64))[None, None, :] for k in fm.inputs}
        p = {k: np.asarray(samples[k], np.float64).reshape(shape)[..., None] for k in fm.params}
        mu = np.asarray(_log_loss_program(fm.name)(lx, p))
    return np.broadcast_to(mu, (*shape, n))


# --------------------------------------------------------------------------------------------
# Derived quantities, prediction, comparison
# --------------------------------------------------------------------------------------------


def _q(v: np.ndarray, qs: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> dict[str, float]:
    return {f"q{round(q * 100)}": float(np.quantile(v, q)) for q in qs} | {
        "mean": float(np.mean(v))
    }


def chinchilla_allocation(
    alpha: Any, beta: Any, A: Any, B: Any, C: float | Sequence[float]
) -> dict[str, np.ndarray]:
    """Compute-optimal allocation (Hoffmann 2022 App. D) for given parameters (arrays broadcast).

    a = beta/(alpha+beta), b = alpha/(alpha+beta), G = (alpha A/(beta B))^(1/(alpha+beta)),
    N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b, tokens_per_param = D_opt / N_opt.
    """
    al, be = np.atleast_1d(np.asarray(alpha, np.float64)), np.atleast_1d(np.asarray(beta, float))
    la, lb = np.log(np.atleast_1d(np.asarray(A, np.float64))), np.log(np.atleast_1d(B))
    a, b = be / (al + be), al / (al + be)
    log_G = (np.log(al) + la - np.log(be) - lb) / (al + be)
    lc = np.log(np.atleast_1d(np.asarray(C, np.float64)) / 6.0)
    log_N = log_G[:, None] + a[:, None] * lc
    log_D = -log_G[:, None] + b[:, None] * lc
    sq = (lambda v: v[:, 0]) if np.ndim(C) == 0 else (lambda v: v)
    return {
        "a": a,
        "b": b,
        "G": np.exp(log_G),
        "N_opt": sq(np.exp(log_N)),
        "D_opt": sq(np.exp(log_D)),
        "tokens_per_param": sq(np.exp(log_D - log_N)),
    }


def compute_optimal(res: FitResult, C: float | Sequence[float]) -> dict[str, np.ndarray]:
    """Per-draw Chinchilla allocation of a fit at compute C (see chinchilla_allocation)."""
    if not CHINCHILLA_PARAMS <= set(res.samples) or set(get_form(res.form).inputs) != {"N", "D"}:
        raise ValueError(
            f"compute_optimal needs a Chinchilla-type fit (params {sorted(CHINCHILLA_PARAMS)} "
            f"over N, D); form {res.form!r} has {sorted(res.samples)}"
        )
    return chinchilla_allocation(
        res.flat("alpha"), res.flat("beta"), np.exp(res.flat("log_A")), np.exp(res.flat("log_B")), C
    )


def compare_published(res: FitResult, C: float = 5.76e23) -> pd.DataFrame:
    """Posterior median [5%, 95%] beside Hoffmann 2022 and Besiroglu 2024 Chinchilla fits."""

    pubs = {
        "Hoffmann 2022": dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
        "Besiroglu 2024": dict(E=1.817, A=482.0, B=2085.4, alpha=0.348, beta=0.366),
    }
    opt = compute_optimal(res, C)
    rows = {}
    for k in ("E", "A", "B", "alpha", "beta", "a", "tokens_per_param"):
        v = opt[k] if k in opt else res.flat(k)
        q5, q50, q95 = np.quantile(v, [0.05, 0.5, 0.95])
        row = {f"{res.method} median": q50, "5%": q5, "95%": q95}
        for name, p in pubs.items():
            al = chinchilla_allocation(p["alpha"], p["beta"], p["A"], p["B"], C)
            row[name] = p[k] if k in p else float(al[k][0])
        rows[k] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def optimal_summary(res: FitResult, C: float) -> dict[str, dict[str, float]]:
    """Quantiles (5/25/50/75/95%) of a, b, G, N_opt, D_opt, D/N at compute C."""
    return {k: _q(v) for k, v in compute_optimal(res, C).items()}


def extrapolation_summary(res: FitResult, C: float) -> dict[str, Any]:
    """At compute C (= 6ND): N_opt, D_opt, D/N quantiles, the posterior-predictive loss at the
    median optimum, and how many decades of C and N that optimum lies beyond the data."""
    s = optimal_summary(res, C)
    at = {"N": [s["N_opt"]["q50"]], "D": [s["D_opt"]["q50"]]}
    pr = predict(res, at)
    per = X.decades_beyond(res.inputs, at)
    return {
        "C": float(C),
        **{k: s[k] for k in ("N_opt", "D_opt", "tokens_per_param", "a")},
        "loss": {q: float(pr[q].iloc[0]) for q in ("q5", "q50", "q95")},
        "decades_C": float(per["C"][0]),
        "decades_N": float(per["N"][0]),
        "decades": float(max(v[0] for v in per.values())),
    }


def extrapolation_line(e: Mapping[str, Any]) -> str:
    """One line of extrapolation_summary, every number with its 90% interval and its reach."""

    def q(v: Mapping[str, float], fmt: str = "{:.3g}") -> str:
        return f"{fmt.format(v['q50'])} [{fmt.format(v['q5'])}, {fmt.format(v['q95'])}]"

    return (
        f"C = {e['C']:.3g} FLOP (6ND; {e['decades_C']:.2g} decades of C and "
        f"{e['decades_N']:.2g} of N beyond the data): N_opt {q(e['N_opt'])}, D_opt "
        f"{q(e['D_opt'])}, D/N {q(e['tokens_per_param'])}, loss {q(e['loss'], '{:.4f}')} "
        "(medians, 90% intervals; loss posterior predictive)"
    )


def noise_scale(res: FitResult) -> np.ndarray:
    """Residual scale of log loss per draw: the posterior sigma, or for a point/bootstrap fit the
    robust scale 1.4826 * MAD of its residuals at the point estimate."""
    if "sigma" in res.samples:
        return res.flat("sigma")
    p = {k: np.asarray([[res.point[k]]]) for k in get_form(res.form).params}
    r = np.log(res.loss) - mean_log_loss(res.form, p, res.inputs).reshape(-1)
    n = res.flat(get_form(res.form).params[0]).size
    return np.full(n, 1.4826 * np.median(np.abs(r - np.median(r))))


def predict(
    res: FitResult,
    inputs: Mapping[str, Any],
    *,
    noise: bool = True,
    discrepancy: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """Posterior predictive loss at new inputs: what a new run there would measure.

    Each draw adds observation noise (the fit's Student-t or Gaussian residual on log loss) and
    the model discrepancy res.discrepancy, whose sd grows with the decades the input lies beyond
    the data (extrapolation.Discrepancy); noise=False and discrepancy=False give the band of the
    fitted curve alone. Columns: the inputs, q5/q25/q50/q75/q95 (90% and 50% central bands),
    mean, and decades_beyond (0 inside the data's range of N, D and C = 6ND).
    """

    fm = get_form(res.form)
    missing = [k for k in fm.inputs if k not in inputs]
    if missing:
        raise ValueError(f"predict: inputs missing {missing} for form {fm.name!r}")
    x = {k: np.atleast_1d(np.asarray(inputs[k], np.float64)) for k in fm.inputs}
    n = max(v.size for v in x.values())
    x = {k: np.broadcast_to(v, (n,)) for k, v in x.items()}
    if any((v <= 0).any() or not np.isfinite(v).all() for v in x.values()):
        raise ValueError("predict: inputs must be positive and finite")
    mu = mean_log_loss(res.form, res.samples, x).reshape(-1, n)
    sig = noise_scale(res)[:, None]
    if (noise or discrepancy) and mu.shape[0] < PREDICTIVE_DRAWS:
        # a point fit (or few draws): repeat them, so the bands are those of the noise terms
        k = -(-PREDICTIVE_DRAWS // mu.shape[0])
        mu, sig = np.repeat(mu, k, axis=0), np.repeat(sig, k, axis=0)
    d_P = X.distance(res.inputs, x)
    rng = np.random.default_rng(seed)
    if noise:
        eps = (
            rng.standard_t(res.df, mu.shape)
            if res.noise == "student_t"
            else rng.standard_normal(mu.shape)
        )
        mu = mu + sig * eps
    if discrepancy:
        mu = mu + sig * res.discrepancy.scale(d_P)[None] * rng.standard_normal(mu.shape)
    L = np.exp(mu)
    qs = np.quantile(L, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
    out = pd.DataFrame({k: v for k, v in x.items()})
    for q, row in zip(("q5", "q25", "q50", "q75", "q95"), qs):
        out[q] = row
    out["mean"] = L.mean(0)
    out["decades_beyond"] = d_P
    return out


def compare(results: Mapping[str, FitResult], ic: str = "loo") -> pd.DataFrame:
    """Rank fits of different forms on the same data by PSIS-LOO (or WAIC) via arviz."""
    import arviz as az  # lazy: arviz is slow to import

    if len({r.loss.size for r in results.values()}) != 1:
        raise ValueError("compare: all fits must be on the same data points")
    for k, r in results.items():
        if r.log_lik is None:
            raise ValueError(f"compare: fit {k!r} ({r.method}) has no pointwise log-likelihood")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz's 1.0 API notice, see above
        return az.compare({k: r.to_inference_data() for k, r in results.items()}, ic=ic)
