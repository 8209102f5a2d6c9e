"""Sequential design (analysis.design, `jaxscale suggest`): known answers for the preposterior."""

from __future__ import annotations

import math
import warnings
import zlib

import numpy as np
import pandas as pd
import pytest

from jaxscale.analysis import design as Dz
from jaxscale.analysis import fit as F
from jaxscale.analysis.fit.results import mean_log_loss, noise_scale
from jaxscale.cli import app

HOFF = (1.69, 406.4, 410.7, 0.34, 0.28)  # Hoffmann 2022 eq. 10: E, A, B, alpha, beta


def _law(N, D):
    E, A, B, a, b = HOFF
    return E + A / np.asarray(N) ** a + B / np.asarray(D) ** b


def _isoflop(budgets, sizes=7, noise=0.005, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        for n in math.sqrt(c / 120) * np.geomspace(1 / 6, 6, sizes):
            d = c / (6 * n)
            rows.append(dict(N=n, D=d, loss=_law(n, d) * math.exp(noise * rng.standard_normal())))
    return pd.DataFrame(rows)


def _laplace(df: pd.DataFrame) -> F.FitResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return F.fit(df, method="laplace", draws=2000, noise="gaussian", quiet=True)


def _linear_gaussian(S=4000, K=3, seed=1):
    rng = np.random.default_rng(seed)
    L = rng.normal(size=(K, K))
    th_SxK = rng.multivariate_normal(np.zeros(K), L @ L.T + 0.5 * np.eye(K), S)
    c_K = np.array([1.0, -0.5, 2.0])
    Phi_CxK = rng.normal(size=(6, K))
    # the draws are the prior: their own covariance is the Sigma the closed form uses
    return th_SxK, np.cov(th_SxK.T), c_K, Phi_CxK


def _after(Sig, c, phi, sigma):
    """Linear-Gaussian posterior: Var[c'θ | y = phi'θ + ε] = c'Σc - (c'Σφ)^2 / (φ'Σφ + σ^2)."""
    return c @ Sig @ c - (c @ Sig @ phi) ** 2 / (phi @ Sig @ phi + sigma**2)


def test_expected_variance_matches_linear_gaussian_closed_form():
    th, Sig, c, Phi = _linear_gaussian()
    sigma = 1.0
    pp = Dz.Preposterior(th @ Phi.T, np.full(len(th), sigma), th @ c, n_sim=256, seed=0)
    ev = pp.evaluate()
    exact = np.array([_after(Sig, c, phi, sigma) for phi in Phi])
    assert np.all(np.abs(ev["var"] - exact) < 0.02 * exact + 3 * ev["var_se"])
    # and the reductions differ enough between candidates that the ranking is tested too
    assert np.argmin(ev["var"]) == np.argmin(exact) and exact.max() / exact.min() > 1.4
    assert np.all(ev["ess"] > 500)


def test_batch_pick_is_conditioned_on_the_first_picks_outcome():
    th, Sig, c, Phi = _linear_gaussian(seed=2)
    sigma = 0.7
    pp = Dz.Preposterior(th @ Phi.T, np.full(len(th), sigma), th @ c, n_sim=256, seed=3)
    first = int(np.argmin(pp.evaluate()["var"]))
    pp.commit(first)
    ev = pp.evaluate()
    phi1 = Phi[first]
    Sig1 = Sig - np.outer(Sig @ phi1, phi1 @ Sig) / (phi1 @ Sig @ phi1 + sigma**2)
    exact = np.array([_after(Sig1, c, phi, sigma) for phi in Phi])
    assert np.all(np.abs(ev["var"] - exact) < 0.04 * exact + 3 * ev["var_se"])
    # a repeat of the first run gains less after it than the first run gained
    gain1 = c @ Sig @ c - _after(Sig, c, phi1, sigma)
    assert pp.now()["var"] - ev["var"][first] < 0.8 * gain1


def test_reweighting_matches_brute_force_refits_on_a_planted_surface():
    """E[Var(log N_opt) after one more run] by reweighting vs by refitting with simulated y."""
    df = _isoflop((1e18, 3e18, 1e19))
    res = _laplace(df)
    tg = Dz.Target("N_opt", C=1e21)
    t = tg.values(res)
    xs = [(3.16e7, 1e20 / (6 * 3.16e7)), (5.6e8, 1e20 / (6 * 5.6e8))]
    N_C, D_C = np.array([x[0] for x in xs]), np.array([x[1] for x in xs])
    mu = mean_log_loss(res.form, res.samples, {"N": N_C, "D": D_C}).reshape(-1, 2)
    sig = noise_scale(res)
    ev = Dz.Preposterior(mu, sig, t, n_sim=128, seed=0).evaluate()
    rng = np.random.default_rng(5)
    for i, (n, d) in enumerate(xs):
        v = []
        for _ in range(8):
            s = rng.integers(t.size)
            y = math.exp(mu[s, i] + sig[s] * rng.standard_normal())
            extra = pd.DataFrame([dict(N=n, D=d, loss=y)])
            v.append(tg.values(_laplace(pd.concat([df, extra]))).var())
        se = math.hypot(np.std(v) / math.sqrt(len(v)), ev["var_se"][i])
        assert abs(ev["var"][i] - np.mean(v)) < 0.05 * np.mean(v) + 3 * se, (i, ev["var"][i], v)
    # the two candidates differ by far more than the tolerance: the check can tell them apart
    assert ev["var"][0] < 0.8 * ev["var"][1] < 0.8 * t.var()


def test_suggestions_close_in_on_the_planted_optimum():
    """Three design picks from an isoFLOP pool shrink the 90% interval of N_opt at 1e20 onto the
    planted value, faster than the same FLOPs spent cheapest-first."""
    from jaxscale.analysis.fit.results import chinchilla_allocation

    E, A, B, a, b = HOFF
    truth = math.log(chinchilla_allocation(a, b, A, B, 1e20)["N_opt"][0])
    pool = _isoflop((1e18, 3e18, 1e19, 3e19), seed=1)
    seed = np.arange(len(pool)) < 7  # the 1e18 budget
    cost = 6 * pool.N.values * pool.D.values
    tg = Dz.Target("N_opt", C=1e20)
    keep = seed.copy()
    fits = [_laplace(pool[keep])]
    for _ in range(3):
        free = np.flatnonzero(~keep)
        s = Dz.suggest(fits[-1], tg, pool.N.values[free], pool.D.values[free], k=1)[0]
        keep[free[s.index]] = True
        fits.append(_laplace(pool[keep]))
    # picks climb from the seed's budget towards C* (the flanks of higher isoFLOP curves)
    assert cost[keep & ~seed].max() > 2 * cost[seed].max()
    cheap = seed.copy()
    for i in np.argsort(cost):
        if not cheap[i] and cost[cheap & ~seed].sum() + cost[i] <= cost[keep & ~seed].sum():
            cheap[i] = True

    def q(r):
        return np.quantile(tg.values(r), [0.05, 0.5, 0.95])

    widths = [q(r)[2] - q(r)[0] for r in fits]
    lo, _, hi = q(fits[-1])
    assert widths[-1] < 0.5 * widths[0] and lo <= truth <= hi
    c5, _, c95 = q(_laplace(pool[cheap]))
    assert widths[-1] < c95 - c5


def test_targets_and_candidates():
    assert Dz.parse_target("N_opt@1e22") == Dz.Target("N_opt", C=1e22)
    assert Dz.parse_target("loss@1e21").kind == "loss_opt"
    assert Dz.parse_target("loss@N=1e9,D=2e10") == Dz.Target("loss", N=(1e9,), D=(2e10,))
    for bad in ("N_opt", "foo@1e3", "N_opt@-1", "loss@N=1"):
        with pytest.raises(ValueError):
            Dz.parse_target(bad)
    N, D = Dz.candidate_grid(np.array([1e7, 1e8]), np.array([1e9, 1e10]), max_n=1e9, max_flops=1e19)
    assert N.max() <= 1e9 * (1 + 1e-12) and (6 * N * D).max() <= 1e19 * (1 + 1e-9)
    assert N.min() == 1e7 and len(N) > 50
    with pytest.raises(ValueError, match="no candidate fits"):
        Dz.candidate_grid(np.array([1e7]), np.array([1e9]), max_n=1e9, max_flops=1e15)


def test_cli_suggest_on_the_chinchilla_points(chinchilla_csv, tmp_path, capsys):
    out = tmp_path / "next.csv"
    rc = app.main(
        [
            "suggest",
            str(chinchilla_csv),
            "--target",
            "N_opt@1e23",
            "--k",
            "2",
            "--budget",
            "1e21",
            "--max-n",
            "1e10",
            "--method",
            "laplace",
            "--out",
            str(out),
            "--grid",
            "11",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "90% interval" in text and "6ND" in text and "laplace" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert len(lines) == 2 and all("expected to narrow" in ln for ln in lines)
    df = pd.read_csv(out)
    assert len(df) == 2 and df.flops.sum() <= 1e21 * (1 + 1e-9) and df.N.max() <= 1e10
    assert (df.var_after < df.var_before).all()
    assert app.main(["suggest", str(chinchilla_csv), "--target", "N_opt"]) == 2


STUDY = """
from jaxscale.config import ModelConfig, RunConfig, TrainConfig
from jaxscale.runs.grids import nd_grid_runs
from jaxscale.runs.hparams import LR_BYTE_SMALL

NAME = "adapt"
LR_RULE = LR_BYTE_SMALL


def runs(setting="default"):
    base = RunConfig(model=ModelConfig(context_length=32, vocab_size=257),
                     train=TrainConfig(batch_size=4, warmup_steps=2, steps=STEPS), name=NAME)
    return nd_grid_runs(base, [(16, 1), (32, 1), (32, 2), (64, 2)], [2**12, 2**14],
                        head_dim=16, prefix=NAME, lr_rule=LR_RULE)
"""


def _planted_trainer(calls: list[str]):
    """A train_fn writing the Hoffmann-law loss of the run's (N, D) with 0.5% noise."""

    def train(cfg, run, progress=False):
        calls.append(cfg.run_id())
        N, D = cfg.model.n_params_nonembedding, cfg.total_tokens
        rng = np.random.default_rng(zlib.crc32(cfg.run_id().encode()))  # stable across processes
        loss = float(_law(N, D) * math.exp(0.005 * rng.standard_normal()))
        steps = cfg.train.steps
        run.append_metrics([{"step": steps, "tokens": D, "loss": loss, "eval_loss": loss}])
        s = {"status": "done", "run_id": cfg.run_id(), "steps": steps, "tokens": D, "loss": loss}
        run.write_summary(s)
        return s

    return train


def test_adaptive_study_stops_at_its_threshold_and_resumes_without_retraining(tmp_path, capsys):
    from jaxscale.cli import suggest
    from jaxscale.runs.study import load_study

    path = tmp_path / "adapt.py"
    path.write_text(STUDY.replace("STEPS", "10"))
    study = load_study(path)
    calls: list[str] = []
    kw = dict(
        target="N_opt@1e12",
        threshold=1.4,
        budget=1e13,
        k=2,
        max_rounds=3,
        train_fn=_planted_trainer(calls),
        method="laplace",  # the loop's mechanics; test_adaptive_real.py runs laplace-is
    )
    res = tmp_path / "res"
    rc = suggest.adaptive_study(study, "default", res, **kw)
    text = capsys.readouterr().out
    path_df = pd.read_csv(res / "adaptive" / "path.csv")
    assert rc == 0, text
    assert "threshold reached" in text and path_df.ratio.iloc[-1] <= 1.4
    assert (path_df.ratio.iloc[:-1] > 1.4).all() and len(path_df) >= 2
    assert path_df.flops_6ND.is_monotonic_increasing
    assert len(calls) == 8 + 2 * (len(path_df) - 1)  # the study's 8, then k=2 per round
    n = len(calls)
    assert suggest.adaptive_study(study, "default", res, **kw) == 0
    assert len(calls) == n  # a rerun trains nothing again
    assert pd.read_csv(res / "adaptive" / "path.csv").runs.tolist() == path_df.runs.tolist()
    # `jaxscale suggest` on the same results: study shapes, the study's LR rule, no repeats
    out = tmp_path / "next.csv"
    argv = ["suggest", str(res), "--study", str(path), "--target", "N_opt@1e12", "--k", "2"]
    assert app.main([*argv, "--method", "laplace", "--budget", "5e10", "--out", str(out)]) == 0
    nxt = pd.read_csv(out)
    shapes = {c.model.n_params_nonembedding for c in study.runs()}
    assert len(nxt) == 2 and set(nxt.N) <= shapes and nxt.lr.str.contains("rule").all()
    done = {(c.model.n_params_nonembedding, c.total_tokens) for c in study.runs()}
    assert not set(zip(nxt.N, nxt.D)) & done
    assert (res / "adaptive" / "path.png").exists()


def test_per_log_ranking_needs_the_flops_spent():
    df = _isoflop((1e18, 3e18, 1e19), noise=0.005)
    res = _laplace(df)
    N, D = Dz.candidate_grid(df.N, df.D, max_n=1e10, max_flops=1e20, n_grid=7)
    with pytest.raises(ValueError, match="spent"):
        Dz.suggest(res, Dz.Target("N_opt", C=1e21), N, D, per="log")
    spent = float((6 * df.N * df.D).sum())
    s = Dz.suggest(res, Dz.Target("N_opt", C=1e21), N, D, k=2, per="log", spent=spent)
    assert len(s) == 2 and s[0].index != s[1].index and s[1].var_after < s[0].var_after


def test_horizon_plans_for_the_budget_instead_of_buying_cheap_runs():
    res = _laplace(_isoflop((1e18, 3e18, 1e19), noise=0.005))
    # target: the loss of the compute-optimal-ish run at 1e20; candidates: that run, and 10
    # cheap runs at 1e17 FLOPs each
    n_big = math.sqrt(1e20 / 120)
    tg = Dz.Target("loss", N=(n_big,), D=(1e20 / (6 * n_big),))
    n_cheap = np.geomspace(2e7, 2e8, 10)
    N, D = np.r_[n_cheap, n_big], np.r_[1e17 / (6 * n_cheap), 1e20 / (6 * n_big)]
    myopic = Dz.suggest(res, tg, N, D, k=10, budget=1e20)
    planned = Dz.suggest(res, tg, N, D, k=1, budget=1e20, horizon=1e20)
    assert myopic[0].index < 10  # per FLOP the first pick is a cheap run ...
    assert planned[0].index == 10  # ... planned for 1e20 FLOPs it is the large one,
    big = Dz.suggest(res, tg, N[10:], D[10:], k=1, budget=1e20)[0]
    assert big.var_after < myopic[-1].var_after  # which shrinks the target more than all 10


def test_laplace_is_resamples_to_the_posterior_and_covers_the_planted_optimum():
    from jaxscale.analysis.fit import inference

    df = _isoflop((1e18, 3e18, 1e19), noise=0.005)
    res = Dz.laplace_is(inference.setup(df, "chinchilla"), draws=2000)
    assert res.method == "laplace-is" and res.ok and res.diagnostics["is"]["k_hat"] <= 0.7
    assert res.flat("alpha").size == 2000 > np.unique(res.flat("alpha")).size  # resampled
    Ng = np.geomspace(1e8, 1e11, 20001)  # the planted law's N_opt at 1e21 on a dense isoFLOP
    n_opt = Ng[np.argmin(_law(Ng, 1e21 / (6 * Ng)))]
    ti = Dz.target_interval(res, Dz.Target("N_opt", C=1e21))
    assert ti["q5"] <= n_opt <= ti["q95"], (ti, n_opt)
