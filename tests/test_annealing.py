"""The LR-annealing law (Tissue et al. 2024): areas, planted-law recovery, CLI, tiny real runs."""

import dataclasses
import json

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


# 1000 steps at LR 3e-3; eval every 10 steps (a smoother curve than the per-batch train loss)
REAL_TRAIN = dict(batch_size=16, steps=1000, warmup_steps=10, lr=3e-3, decay_fraction=0.3)


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
                **REAL_TRAIN, schedule=schedule, eval_every=10, checkpoint_every=10**6
            ),
        )
        assert (
            train.train(cfg, RunDir.of(root, cfg), progress=False, corpus=corpus)["status"]
            == "done"
        )
    runs, curves = results.load(root)
    ids = dict(zip(runs["name"], runs["run_id"]))
    draws = dict(chains=4, warmup=1000, draws=1000, quiet=True)  # the CLI's default
    fit = an.fit_runs(runs, curves, [ids["anneal-wsd"]], target="eval_loss", **draws)
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
    assert fit.ok, fit.result.problems
    _, own = _check(fit, runs, curves, ids["anneal-wsd"])
    assert own["coverage_90"] >= 0.8 and own["final_inside"], own
    pr, _ = _check(fit, runs, curves, ids["anneal-cosine"])
    last = pr.iloc[-1]
    assert last["S2_beyond"] and last["S2_decades_beyond"] > 0.3  # cosine anneals far more
    assert "transfer to other schedules is untested" in an.prediction_line(fit, last, "cos")


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured (docs/annealing.md): fitted on the tiny WSD run the law predicts the "
    "cosine run's final eval loss 2-5% too low, outside its 90% interval",
)
def test_tiny_real_runs_wsd_predicts_cosine(tiny_wsd_fit):
    """Issue 18 (c): the WSD fit predicts the cosine run's final loss within its interval."""
    runs, curves, ids, fit = tiny_wsd_fit
    _, ck = _check(fit, runs, curves, ids["anneal-cosine"])
    print(ck)
    assert ck["final_inside"], ck
