"""Honest numbers from the fitter: predictive bands that survive a wrong form, replicates that do
not multiply evidence, named warnings for what the data cannot tell, and the sampler's own
pieces (direct potential, rank diagnostics) checked against numpyro and arviz.

Fast: Laplace fits (one compile per data size) and two short NUTS fits; the long NUTS claims
are in test_fit.py (SBC, Chinchilla) and test_report.py (the report's backtest).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxscale.analysis import fit as F
from jaxscale.analysis import synthetic
from jaxscale.analysis.fit import inference

LAPLACE = dict(method="laplace", draws=4000, quiet=True)
NUTS_SHORT = dict(method="nuts", warmup=300, draws=400, quiet=True)


def _chinchilla_240(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    return df[df["loss"] < sorted(df["loss"])[-5]]  # Besiroglu 2024: drop the 5 highest


def _planted(n_c: int = 5, n_per: int = 7, sigma: float = 0.005, seed: int = 0) -> pd.DataFrame:
    """Well-specified Chinchilla-form data (Hoffmann 2022 eq. 2) on an isoFLOP design."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in np.geomspace(1e18, 1e21, n_c):
        for n in math.sqrt(c / 120) * np.geomspace(1 / 6, 6, n_per):
            d = c / (6 * n)
            loss = (1.69 + 406.4 / n**0.34 + 410.7 / d**0.28) * math.exp(sigma * rng.normal())
            rows.append({"N": n, "D": d, "C": c, "loss": loss})
    return pd.DataFrame(rows)


def test_direct_potential_equals_the_numpyro_model() -> None:
    """The samplers' hand-written density is numpyro_model's, to rounding."""
    import jax
    import jax.numpy as jnp
    from numpyro.infer.util import potential_energy

    prob = F.setup(_planted(), "chinchilla")
    w = np.ones(prob.size)
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        lx, ly, wj, pa, ce = inference._arrays(prob, w)
        model = inference.numpyro_model
        kw = dict(
            form="chinchilla",
            families=prob.spec.families,
            prior_args=pa,
            centers=ce,
            noise=prob.spec.noise,
            df=prob.spec.df,
        )
        u0 = inference._init_points(prob, {k: float(v) for k, v in ce.items()}, 4, 0)
        for u in u0 + 0.1 * rng.standard_normal(u0.shape):
            params = {n: jnp.asarray(u[i]) for i, n in enumerate(prob.form.sites)}
            ref = potential_energy(lambda lx, ly, **k: model(lx, ly, **kw), (lx, ly), {}, params)
            mine = inference._potential(prob.spec, jnp.asarray(u), lx, ly, wj, pa, ce)
            assert float(mine) == pytest.approx(float(ref), rel=1e-10, abs=1e-8)


def test_rank_diagnostics_match_arviz() -> None:
    """Rank-normalised split R-hat, bulk and tail ESS agree with arviz (Vehtari et al. 2021)."""
    import arviz as az

    rng = np.random.default_rng(1)
    for phi, shift in ((0.0, 0.0), (0.9, 0.0), (0.5, 0.3)):
        x = np.zeros((4, 500))
        e = rng.standard_normal((4, 500))
        for t in range(1, 500):
            x[:, t] = phi * x[:, t - 1] + e[:, t]
        x[0] += shift  # one chain off: R-hat must see it
        mine = inference.rank_diagnostics(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            assert mine["r_hat"] == pytest.approx(float(az.rhat(x)), rel=1e-6)
            assert mine["ess_bulk"] == pytest.approx(float(az.ess(x, method="bulk")), rel=1e-6)
            assert mine["ess_tail"] == pytest.approx(float(az.ess(x, method="tail")), rel=1e-6)


def test_predict_is_posterior_predictive_and_widens_with_reach() -> None:
    """predict includes noise and a discrepancy that grows with decades beyond the data."""
    res = F.fit(_planted(), "chinchilla", **LAPLACE)
    x = {"N": [1e9, 1e11, 1e12], "D": [1e10, 1e12, 1e13]}  # inside, then ~3 and ~5 decades out
    full = F.predict(res, x)
    curve = F.predict(res, x, noise=False, discrepancy=False)
    noisy = F.predict(res, x, discrepancy=False)
    width = lambda p: np.log(p["q95"] / p["q5"]).to_numpy()  # noqa: E731
    assert (width(noisy) > width(curve)).all()
    assert (width(full) >= width(noisy) * 0.99).all()
    assert full["decades_beyond"].iloc[0] == 0.0
    assert full["decades_beyond"].iloc[2] > full["decades_beyond"].iloc[1] > 2
    # the discrepancy term dominates far out: widths grow with reach
    assert width(full)[2] > 2 * width(noisy)[2]


def test_repeated_points_do_not_multiply_evidence() -> None:
    """20 rows repeated 5 times give (nearly) the alpha interval of the 20 rows."""
    base = _planted(n_c=4, n_per=5, sigma=0.01, seed=3)
    assert len(base) == 20
    rng = np.random.default_rng(0)
    reps = pd.concat([base] * 5, ignore_index=True)
    reps["loss"] *= np.exp(0.002 * rng.standard_normal(len(reps)))  # seed-to-seed spread
    one = F.fit(base, "chinchilla", **LAPLACE)
    with pytest.warns(F.ReplicatesMergedWarning, match="100 rows at 20 distinct"):
        five = F.fit(reps, "chinchilla", **LAPLACE)
    assert five.loss.size == 20 and five.diagnostics["replicates"]["max_per_point"] == 5
    assert any(c.startswith("replicates merged") for c in five.caveats)
    w1 = np.diff(np.quantile(one.flat("alpha"), [0.05, 0.95]))[0]
    w5 = np.diff(np.quantile(five.flat("alpha"), [0.05, 0.95]))[0]
    assert w5 == pytest.approx(w1, rel=0.15)


def test_prior_dominated_parameters_are_named() -> None:
    """Eight points from two budgets: E is flagged (NUTS; a Laplace fit's Gaussian hides it and
    says so); a rich design flags nothing."""
    thin = _planted(n_c=2, n_per=4, sigma=0.01, seed=2)
    with pytest.warns(F.PriorDominatedWarning, match=r"prior-dominated: E \("):
        res = F.fit(thin, "chinchilla", **NUTS_SHORT)
    assert res.table().loc["E", "prior_shift"] > inference.PRIOR_SHIFT_MAX
    lap = F.fit(thin, "chinchilla", **LAPLACE)
    assert any("Gaussian" in c for c in lap.caveats)
    with warnings.catch_warnings():
        warnings.simplefilter("error", F.PriorDominatedWarning)
        rich = F.fit(_planted(n_c=6, n_per=8, sigma=0.003), "chinchilla", **NUTS_SHORT)
    assert not rich.caveats


def test_misspecified_laws_top_budget_coverage() -> None:
    """Data from three laws the Chinchilla form does not contain (Kaplan eq. 1.5, an N-D cross
    term, LR tuned for one size), two seeds each: held-out top budgets fall in their 90% bands
    >= 85% of the time (noise alone covered about half of them)."""
    inside = total = 0
    for kind in synthetic.MISSPECIFIED:
        for seed in (0, 1):
            bt = F.backtest(
                synthetic.misspecified_isoflop(kind, seed=seed), "top-budget", **LAPLACE
            )
            assert bt.points["decades_beyond"].min() > 0.4
            inside, total = inside + bt.n_inside, total + bt.n
    assert total == 42 and inside / total >= 0.85, (inside, total)


def test_chinchilla_leave_top_compute_out_coverage(chinchilla_csv: Path) -> None:
    """The published points with the top decade and the top 1.5 decades of compute held out:
    >= 85% of the held-out losses inside their 90% bands (noise alone: 47 of 86)."""
    df = _chinchilla_240(chinchilla_csv)
    inside = total = 0
    for spec in ("C > 1e21", "C > 10**20.5"):
        bt = F.backtest(df, spec, **LAPLACE)
        assert bt.fit.discrepancy.n_points > 40  # estimated from the data, not the default
        inside, total = inside + bt.n_inside, total + bt.n
    assert total == 86 and inside / total >= 0.85, (inside, total)
