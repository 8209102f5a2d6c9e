"""The LR-annealing law (Tissue et al. 2024): areas, planted-law recovery, CLI, tiny real runs."""

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from jaxscale import cli
from jaxscale.analysis import annealing as an
from jaxscale.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.runs import results
from jaxscale.runs.rundir import RunDir

TRUE = dict(L0=2.5, A=0.8, alpha=0.5, C=2.0)  # planted law; S1 in absolute-LR units
BASE = TrainConfig(steps=1000, warmup_steps=20, lr=2e-3, min_lr_ratio=0.1, eval_every=1000)
FIT = dict(chains=4, warmup=300, draws=300, quiet=True)


def test_areas_follow_the_definition():
    lr = np.array([0.0, 0.5, 1.0, 1.0, 0.5, 0.25])
    S1, S2 = an.areas(lr, lam=0.5)
    np.testing.assert_allclose(S1, [0, 0, 0.5, 1.5, 2.5, 3.0, 3.25])
    # momentum from the peak (update 3) on: m4 = 0, m5 = 0.5, m6 = 0.5 * 0.5 + 0.25
    np.testing.assert_allclose(S2, [0, 0, 0, 0, 0, 0.5, 1.0])
    # λ = 0: S2 is the LR drop from the peak; λ → 1: the area between the peak and the LR
    cos = an.schedule_lr(BASE)
    k0 = an.peak_index(cos) + 1
    assert k0 == BASE.warmup_steps + 1 and cos[k0 - 1] == pytest.approx(BASE.lr)
    np.testing.assert_allclose(an.areas(cos, lam=0.0)[1][k0:], cos.max() - cos[k0 - 1 :])
    area = np.r_[np.zeros(k0 + 1), np.cumsum(cos.max() - cos[k0:])]
    np.testing.assert_allclose(an.areas(cos, lam=1 - 1e-12)[1], area, atol=1e-9)
    with pytest.raises(ValueError, match="lambda"):
        an.areas(cos, lam=1.0)


def _planted(schedule: str, rid: str, rng: np.random.Generator, **kw) -> tuple[pd.DataFrame, dict]:
    tc = dataclasses.replace(BASE, schedule=schedule, **kw)
    lr = an.schedule_lr(tc)
    S1, S2 = an.areas(lr)
    k = np.arange(1, tc.steps + 1)
    s = k - an.UPDATES_BEHIND["loss"]  # train loss of step k: after k - 1 updates
    y = np.full(k.size, np.nan)
    ok = S1[s] > 0  # the law starts once the LR has moved the weights
    y[ok] = an.loss_law(S1[s[ok]], S2[s[ok]], **TRUE)
    y *= np.exp(0.01 * rng.standard_normal(k.size))
    curve = pd.DataFrame({"run_id": rid, "step": k, "lr": lr, "loss": y, "eval_loss": np.nan})
    meta = {"run_id": rid, "name": rid, "status": "done", "n_params_nonembedding": 1e6}
    return curve, meta | {"train.schedule": schedule}


def test_planted_law_is_recovered_and_predicts_a_held_out_schedule():
    rng = np.random.default_rng(0)
    made = [
        _planted("wsd", "wsd", rng),
        _planted("cosine", "cosine", rng),
        _planted("wsd", "wsd_half", rng, decay_fraction=0.5),
    ]
    curves = pd.concat([c for c, _ in made])
    runs = pd.DataFrame([m for _, m in made])
    fit = an.fit_runs(runs, curves, ["wsd", "cosine"], lam=an.LAMBDA, **FIT)
    assert fit.ok, fit.result.problems
    t = fit.result.table()
    for k, v in TRUE.items():
        assert t.loc[k, "q5"] <= v <= t.loc[k, "q95"], (k, v, t.loc[k])
    # held out: wsd decaying over half the run, same length (inside the fitted S1 range)
    held = dataclasses.replace(BASE, schedule="wsd", decay_fraction=0.5)
    lr = an.schedule_lr(held)
    pr = an.predict_lr(fit, lr, steps=[held.steps]).iloc[0]
    S1, S2 = an.areas(lr)
    truth = an.loss_law(S1[-2], S2[-2], **TRUE)
    assert pr["q5"] <= truth <= pr["q95"] and not pr["extrapolated"]
    assert pr["q95"] / pr["q5"] < 1.1  # informative, not just wide
    line = an.prediction_line(fit, pr, "wsd_half")
    assert "90% central" in line and "within the fitted S1 range" in line
    obs = curves[curves["run_id"] == "wsd_half"].dropna(subset=["loss"])[["step", "loss"]]
    ck = an.check_against(fit, an.predict_lr(fit, lr, steps=obs["step"].to_numpy()[30:]), obs)
    assert ck["coverage_90"] > 0.8 and ck["final_inside"]
    # three times longer: beyond the fitted S1, flagged and wider, still covering the law
    long = dataclasses.replace(held, steps=3 * held.steps)
    lr3 = an.schedule_lr(long)
    pr3 = an.predict_lr(fit, lr3, steps=[long.steps]).iloc[0]
    S1, S2 = an.areas(lr3)
    assert pr3["extrapolated"] and pr3["decades_beyond"] > 0.3
    assert pr3["q5"] <= an.loss_law(S1[-2], S2[-2], **TRUE) <= pr3["q95"]
    assert pr3["q95"] / pr3["q5"] > pr["q95"] / pr["q5"]
    assert "EXTRAPOLATED" in an.prediction_line(fit, pr3, "long")


def test_joint_fit_over_sizes_predicts_each_size():
    """Two sizes with L0(N) = E + B N^-β planted: the joint form, predictions per size."""
    rng = np.random.default_rng(3)
    E, B, beta = 1.8, 50.0, 0.35
    made = []
    for N in (1e6, 4e6):
        L0 = E + B * N**-beta
        for schedule in ("wsd", "cosine"):
            c, m = _planted(schedule, f"{schedule}-{N:g}", rng)
            c["loss"] += L0 - TRUE["L0"]  # the same curve shifted to this size's L0
            made.append((c, m | {"n_params_nonembedding": N}))
    curves = pd.concat([c for c, _ in made])
    runs = pd.DataFrame([m for _, m in made])
    fit = an.fit_runs(runs, curves, list(runs["run_id"]), lam=an.LAMBDA, method="laplace")
    assert fit.joint and fit.result.form == "anneal_N"
    assert any("not identified" in c for c in fit.caveats)
    held = dataclasses.replace(BASE, schedule="wsd", decay_fraction=0.5)
    lr = an.schedule_lr(held)
    S1, S2 = an.areas(lr)
    for N in (1e6, 4e6):
        truth = an.loss_law(S1[-2], S2[-2], E + B * N**-beta, TRUE["A"], TRUE["alpha"], TRUE["C"])
        pr = an.predict_lr(fit, lr, N=N, steps=[held.steps]).iloc[0]
        assert pr["q5"] <= truth <= pr["q95"] and not pr["extrapolated"], (N, truth, pr)
    assert an.predict_lr(fit, lr, N=3e7, steps=[held.steps]).iloc[0]["extrapolated"]
    with pytest.raises(ValueError, match="needs N"):
        an.predict_lr(fit, lr)


def test_runs_that_never_anneal_are_refused():
    rng = np.random.default_rng(1)
    curve, meta = _planted("constant", "const", rng)
    with pytest.raises(ValueError, match="never anneal"):
        an.fit_runs(pd.DataFrame([meta]), curve, ["const"], **FIT)


def _write_run(root, schedule: str, rng: np.random.Generator, **kw) -> str:
    """A run directory holding a planted-law curve (no training)."""
    cfg = RunConfig(
        name=f"planted-{schedule}",
        model=ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, context_length=32),
        train=dataclasses.replace(BASE, schedule=schedule, **kw),
    )
    curve, _ = _planted(schedule, cfg.run_id(), rng, **kw)
    run = RunDir.of(root, cfg)
    run.path.mkdir(parents=True)
    run.write_config(cfg)
    rows = [
        {"step": int(r.step), "tokens": int(r.step) * cfg.tokens_per_step, "lr": r.lr}
        | ({"loss": r.loss} if np.isfinite(r.loss) else {"loss": 10.0})
        for r in curve.itertuples()
    ]
    run.append_metrics(rows)
    run.write_summary({"status": "done", "steps": BASE.steps, "loss": float(curve.loss.iloc[-1])})
    return cfg.run_id()


def test_cli_fits_compares_and_predicts(tmp_path, capsys):
    rng = np.random.default_rng(2)
    _write_run(tmp_path, "wsd", rng)
    held = _write_run(tmp_path, "cosine", rng)
    out = tmp_path / "out"
    argv = ["anneal", str(tmp_path), "--fit-runs", "planted-wsd", "--compare-runs", held[:8]]
    argv += ["--predict-schedule", "cosine", "--steps", "2000", "--all-runs", "--out", str(out)]
    code = cli.main(argv + ["--method", "laplace", "--lambda", "0.999"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "log_C" in text and "90% central interval" in text
    assert f"held-out run {held[:8]}" in text and "observed" in text
    assert "schedule cosine 2000 steps" in text and "EXTRAPOLATED" in text
    assert "one curve: the law's transfer" in text
    info = json.loads((out / "anneal.json").read_text())
    assert info["lambda"] == 0.999 and info["held_out"][held]["final_inside"]
    assert (out / "anneal.png").exists() and (out / "predictions.csv").exists()
    # every flag is described
    p = next(
        a for a in cli.app.build_parser()._actions if hasattr(a, "choices") and a.choices
    ).choices["anneal"]
    assert p.description and all(a.help for a in p._actions)
    with pytest.raises(SystemExit):
        cli.main(["anneal", str(tmp_path)])  # --fit-runs is required
    assert cli.main(["anneal", str(tmp_path), "--fit-runs", "nope", "--all-runs"]) == 2


def _ar1_noise(rng: np.random.Generator, n: int, rho: float, sd: float) -> np.ndarray:
    """Stationary AR(1) noise: the wiggles a trajectory shares between neighbouring evals."""
    e = np.empty(n)
    e[0] = rng.standard_normal()
    for i in range(1, n):
        e[i] = rho * e[i - 1] + math.sqrt(1 - rho**2) * rng.standard_normal()
    return sd * e


def test_wsd_fit_covers_cosine_over_seeds_with_autocorrelated_noise():
    """Stated 90% intervals cover ~90%: a WSD eval curve (law + AR(1) noise, lag-1 0.9 between
    evals, λ drawn from the grid) predicts the cosine run's final eval loss, over 20 seeds."""
    tc = TrainConfig(steps=1000, warmup_steps=10, lr=3e-3, min_lr_ratio=0.1, decay_fraction=0.3)
    lr = {k: an.schedule_lr(dataclasses.replace(tc, schedule=k)) for k in ("wsd", "cosine")}
    k = np.arange(10, tc.steps + 1, 10)  # eval every 10 steps
    rng = np.random.default_rng(12345)
    hits = []
    for seed in range(20):
        lam = float(rng.choice(an.LAMBDA_GRID))
        S = {n: an.areas(v, lam=lam) for n, v in lr.items()}
        # the wsd cooldown lowers the loss by 0.06 nats whatever λ, as on the tiny real runs
        law = dict(L0=1.0, A=1.5, alpha=0.22, C=0.06 / S["wsd"][1][-1])
        curves, truth = [], {}
        for n, (S1, S2) in S.items():
            y = np.full(tc.steps, np.nan)
            y[k - 1] = an.loss_law(S1[k], S2[k], **law) * np.exp(_ar1_noise(rng, k.size, 0.9, 5e-3))
            curves.append(pd.DataFrame({"run_id": n, "step": np.arange(1, tc.steps + 1)}))
            curves[-1] = curves[-1].assign(lr=lr[n], loss=np.nan, eval_loss=y)
            truth[n] = y[-1]
        runs = pd.DataFrame(
            [{"run_id": n, "status": "done", "n_params_nonembedding": 8e3} for n in S]
        )
        fit = an.fit_runs(
            runs, pd.concat(curves), ["wsd"], target="eval_loss", method="laplace", seed=seed
        )
        pr = an.predict_lr(fit, lr["cosine"], steps=[tc.steps], seed=seed).iloc[0]
        hits.append(pr["q5"] <= truth["cosine"] <= pr["q95"])
    # 90% nominal; 16 of 20 or more (P(X >= 16) = 0.96 for X ~ Binomial(20, 0.9))
    assert sum(hits) >= 16, hits


# 500 steps at LR 3e-3, eval every 5 (a smoother curve than the per-batch train loss); the two
# runs cannot share a grouped step (train.compatible: the schedule is compiled in)
REAL_TRAIN = dict(batch_size=16, steps=500, warmup_steps=10, lr=3e-3, decay_fraction=0.3)


@pytest.fixture(scope="module")
def tiny_wsd_fit(tmp_path_factory):
    """A tiny WSD run and a tiny cosine run of one size; the law fitted to the WSD eval curve."""
    from jaxscale.core import data, train

    root = tmp_path_factory.mktemp("anneal_real")
    DATA = DataConfig(max_bytes=2_000_000)
    corpus = data.load_corpus(DATA)
    for schedule in ("wsd", "cosine"):
        cfg = RunConfig(
            name=f"anneal-{schedule}",
            model=ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, context_length=32),
            data=DATA,
            train=TrainConfig(
                **REAL_TRAIN, schedule=schedule, eval_every=5, checkpoint_every=10**6
            ),
        )
        assert (
            train.train(cfg, RunDir.of(root, cfg), progress=False, corpus=corpus)["status"]
            == "done"
        )
    runs, curves = results.load(root)
    ids = dict(zip(runs["name"], runs["run_id"]))
    # Laplace: NUTS for the 7 lambdas takes minutes here (and fails its diagnostics on this
    # curve for most of them, while covering too: docs/annealing.md)
    fit = an.fit_runs(runs, curves, [ids["anneal-wsd"]], target="eval_loss", method="laplace")
    return runs, curves, ids, fit


def _check(fit, runs, curves, rid):
    lr = an.run_lr(curves[curves["run_id"] == rid], rid)
    obs = an.curve_points(runs, curves, [rid], target="eval_loss", points=None)
    pr = an.predict_lr(fit, lr, steps=obs["step"].to_numpy())
    print(an.prediction_line(fit, pr.iloc[-1], rid[:8]))
    return pr, an.check_against(fit, pr, obs[["step", "loss"]])


@pytest.mark.slow
def test_tiny_real_runs_fit_and_flags(tiny_wsd_fit):
    """The logged LR is the planned one; the fit holds on its own curve; transfer is flagged."""
    runs, curves, ids, fit = tiny_wsd_fit
    print(fit.describe())
    cos = an.run_lr(curves[curves["run_id"] == ids["anneal-cosine"]], "cosine")
    plan = an.schedule_lr(TrainConfig(**REAL_TRAIN, schedule="cosine"))
    np.testing.assert_allclose(cos, plan, rtol=1e-6)
    _, own = _check(fit, runs, curves, ids["anneal-wsd"])
    assert own["coverage_90"] >= 0.8 and own["final_inside"], own
    pr, _ = _check(fit, runs, curves, ids["anneal-cosine"])
    last = pr.iloc[-1]
    # one curve does not fix lambda; the cosine anneals beyond the WSD under some lambda
    assert len(fit.mixture) > 1 and any("do not fix lambda" in c for c in fit.caveats)
    assert last["S2_beyond"]
    line = an.prediction_line(fit, last, "cos")
    assert "transfer to other schedules is untested" in line and "averaged over lambda" in line


@pytest.mark.slow
def test_tiny_real_runs_wsd_predicts_cosine(tiny_wsd_fit):
    """Issue 18 (c): the WSD fit predicts the cosine run's final loss within its interval."""
    runs, curves, ids, fit = tiny_wsd_fit
    _, ck = _check(fit, runs, curves, ids["anneal-cosine"])
    _, own = _check(fit, runs, curves, ids["anneal-wsd"])
    print(ck)
    assert ck["final_inside"] and ck["coverage_90"] >= 0.8, ck
    # informative: under 10% wide, and nearer the cosine's loss than the WSD run's
    assert ck["final_q95"] / ck["final_q5"] < 1.1, ck
    miss = abs(ck["final_q50"] - ck["final_observed"])
    assert miss < abs(ck["final_q50"] - own["final_observed"]), (ck, own)
