"""Hyperparameter rules: values, fitted intervals, extrapolation warnings, and the grids that
apply them (a few seconds, no training)."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import plant_run

from jaxscale.analysis import lr_sensitivity
from jaxscale.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.core import flops, train
from jaxscale.runs import grids
from jaxscale.runs.hparams import (
    LR_BYTE_SMALL,
    LR_STUDY_TINY,
    Constant,
    Domain,
    PowerLaw,
    StepLaw,
    explain,
)
from jaxscale.runs.study import load_study

BASE = RunConfig(
    model=ModelConfig(context_length=64, vocab_size=257),
    data=DataConfig(corpus="stdlib", tokenizer="byte"),
    train=TrainConfig(batch_size=4, warmup_steps=10),
)


def test_power_law_value_and_step_law_constants():
    r = PowerLaw(0.5, -0.5, exp_D=0.25, exp_B=0.125)
    assert r(1e4, 1e8, 256.0) == pytest.approx(0.5 * 1e-2 * 1e2 * 2.0)
    sl = StepLaw()
    # Li et al. 2025 eq. 1 at N = 1e9, D = 1e11 tokens
    assert sl(1e9, 1e11, 1.0) == pytest.approx(1.79 * 1e9**-0.713 * 1e11**0.307)
    assert sl.batch(1.0, 1e11, 1.0) == pytest.approx(0.58 * 1e11**0.571)
    assert sl.batch(1e6, 1e11, 1.0) == sl.batch(1e9, 1e11, 1.0)  # B_opt does not depend on N
    assert "Step Law" in sl.describe() and "N^-0.713" in sl.describe()
    assert Constant(3e-3).describe() == "constant 0.003"
    with pytest.raises(ConfigError, match="positive"):
        Constant(0.0)


def test_domain_warns_on_every_extrapolated_axis():
    d = Domain(N=(1e3, 1e4), D=(1e5, 1e5))
    assert d.warnings(5e3, 1e5, 64.0) == ()
    w = d.warnings(1e5, 1e6, 64.0)
    assert len(w) == 2 and "N=1e+05 is 10× above" in w[0] and "D=1e+06 is 10× above" in w[1]
    assert "WARNING: extrapolated" in str(StepLaw().at(3e3, 1e5, 512.0))
    assert "no interval" in str(StepLaw().at(3e8, 1e10, 1e6))


def _planted(rng, n_rep=1, se=0.05):
    """log10 LR* = log10 2 - 0.6 log10 N + 0.3 log10 D + 0.1 log10 B + N(0, se)."""
    N, D, B = (a.ravel() for a in np.meshgrid([1e3, 1e4, 1e5], [1e5, 1e6], [256, 1024]))
    N, D, B = (np.repeat(a, n_rep) for a in (N, D, B))
    y = math.log10(2) - 0.6 * np.log10(N) + 0.3 * np.log10(D) + 0.1 * np.log10(B)
    return N, D, B, 10 ** (y + rng.normal(0, se, y.size)), np.full(y.size, se)


@pytest.mark.parametrize("with_se", [True, False])
def test_fit_covers_planted_law_at_its_level(with_se):
    """Over 400 planted data sets the 90% intervals of exp_N and of the value at a point
    outside the grid cover the truth at least 90% of the time, at most 96% (the SEs given, or
    the noise estimated from 12 points and a Student-t interval)."""
    rng = np.random.default_rng(0)
    hits_N, hits_v = [], []
    truth = 2 * 3e5**-0.6 * 3e6**0.3 * 512**0.1
    for _ in range(400):
        N, D, B, v, se = _planted(rng)
        r = PowerLaw.fit(N, D, B, v, se if with_se else None)
        sd = math.sqrt(r.interval.cov[1][1])
        hits_N.append(abs(r.exp_N + 0.6) < 1.6449 * sd)
        at = r.at(3e5, 3e6, 512.0)
        hits_v.append(at.lo < truth < at.hi)
        assert at.warnings and "N=3e+05" in at.warnings[0]
    assert 0.87 <= np.mean(hits_N) <= 0.96
    assert 0.87 <= np.mean(hits_v) <= 0.96


def test_fit_holds_unvaried_axes_at_zero_and_refuses_confounded_designs():
    rng = np.random.default_rng(1)
    N, D, B, v, se = _planted(rng)
    keep = D == 1e5
    r = PowerLaw.fit(N[keep], D[keep], B[keep], v[keep], se[keep])
    assert r.exp_D == 0.0 and r.interval.cov[2][2] == 0.0
    assert r.domain.D == (1e5, 1e5)
    assert r.at(1e4, 1e6, 256.0).warnings  # other D: extrapolated
    with pytest.raises(ValueError, match="do not separate"):
        PowerLaw.fit([1e3, 1e4], [1e5, 1e6], [256, 256], [0.01, 0.02], [0.1, 0.1])


def test_from_lr_study_recovers_a_planted_drift(tmp_path):
    """An LR study planted through run directories, analysed by `jaxscale lr`'s library,
    read back as a rule: LR* = 0.5 N^-0.5 (B=256 tokens), edge groups left out."""
    base = dataclasses.replace(BASE, train=dataclasses.replace(BASE.train, batch_size=4))
    lrs = list(1e-3 * 2.0 ** np.arange(9))
    runs = grids.lr_grid_runs(base, [(16, 1), (32, 1), (32, 2), (64, 2)], lrs, head_dim=16)
    rng = np.random.default_rng(0)
    for cfg in runs:
        N = cfg.model.n_params_nonembedding
        x = math.log10(cfg.train.lr) - math.log10(0.5 * N**-0.5)
        loss = 3.0 + 0.3 * x**2 + rng.normal(0, 0.002)
        plant_run(tmp_path, cfg, summary={"status": "done", "loss": loss})
    study = lr_sensitivity.analyse(tmp_path)
    study.save(tmp_path / "analyses")
    r = PowerLaw.from_lr_study(tmp_path)
    sd = math.sqrt(r.interval.cov[1][1])
    assert r.exp_N == pytest.approx(-0.5, abs=3 * sd + 0.01)
    assert r.exp_B == 0.0 and r.domain.B == (256.0, 256.0)
    assert r.domain.D == (runs[0].total_tokens,) * 2
    n_interior = int((~study.optima["edge"]).sum())
    assert r.domain.N == tuple(
        float(n) for n in study.optima.loc[~study.optima["edge"], "N"].agg(["min", "max"])
    )
    assert n_interior >= 2
    with pytest.raises(ConfigError, match="jaxscale lr"):
        PowerLaw.from_lr_study(tmp_path / "nowhere")


def test_lr_study_tiny_reproduces_the_measured_optima():
    """The shipped rule gives the optima the kit's LR study measured (docs/hyperparameters.md)."""
    assert LR_STUDY_TINY(3120, 76800, 512) == pytest.approx(0.0326, rel=0.01)
    assert LR_STUDY_TINY(98624, 76800, 512) == pytest.approx(0.00325, rel=0.01)
    assert not LR_STUDY_TINY.at(98624, 76800, 512).warnings  # the 99k optimum is bracketed
    assert LR_STUDY_TINY.at(4e5, 76800, 512).warnings  # beyond the largest size studied


# The eight bracketed optima behind LR_BYTE_SMALL (N, D, η*): experiments/lr.py tiny at B = 8 × 64
# tokens, then experiments/step_law.py quickstart at 4 × 128 (docs/hyperparameters.md).
BYTE_SMALL_OPTIMA = [
    (3120, 76800, 0.0346906),
    (24736, 76800, 0.00982494),
    (3120, 967680, 0.0241816),
    (6224, 1614848, 0.0145224),
    (24736, 152064, 0.00710585),
    (24736, 1518592, 0.0115680),
    (55536, 245760, 0.00409167),
    (98624, 434688, 0.00176763),
]


def test_lr_byte_small_is_the_fit_of_its_optima_and_warns_outside_them():
    N, D, lr = (np.array(c, float) for c in zip(*BYTE_SMALL_OPTIMA))
    r = PowerLaw.fit(N, D, np.full(N.size, 512.0), lr, axes=("N",))
    assert r.coef == pytest.approx(LR_BYTE_SMALL.coef, rel=1e-4)
    assert r.exp_N == pytest.approx(LR_BYTE_SMALL.exp_N, rel=1e-4)
    assert np.allclose(r.interval.cov, LR_BYTE_SMALL.interval.cov, rtol=1e-4)
    assert r.domain == LR_BYTE_SMALL.domain
    # With D free the same optima show no D dependence; Step Law's 0.307 lies outside.
    rd = PowerLaw.fit(N, D, np.full(N.size, 512.0), lr, axes=("N", "D"))
    half = 1.6449 * math.sqrt(rd.interval.cov[2][2])
    assert rd.exp_D - half < 0 < rd.exp_D + half < StepLaw().exp_D
    quickstart = _study("quickstart").runs("default")
    t = explain(quickstart, LR_BYTE_SMALL)
    assert np.allclose(t["lr"], t["rule_lr"])
    # Warned: the sizes below the smallest N measured, and the longest run (2× the largest D).
    warned = t[t["warnings"] != ""]
    assert set(warned["N"][warned["warnings"].str.startswith("N=")]) == {792, 1576}
    assert (warned["D"][warned["warnings"].str.startswith("D=")] > 3e6).all()
    assert (t["warnings"] == "").sum() >= 7


def _study(name):
    return load_study(Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py")


def test_isoflop_and_nd_grids_apply_and_record_rules():
    rule = PowerLaw(1.0, -0.5, exp_D=0.1)
    plan = grids.isoflop_plan(
        BASE, [1e9], [(16, 1), (32, 1)], head_dim=16, lr_rule=rule, batch_rule=StepLaw().batch
    )
    for run in plan:
        c = run.cfg
        N, D, B = c.model.n_params_nonembedding, c.total_tokens, c.tokens_per_step
        assert c.train.lr == pytest.approx(rule(N, D, B))
        assert c.train.lr_rule == rule.describe()
        assert c.train.batch_rule == StepLaw().batch.describe()
        D_plan = 1e9 / flops.flops_per_token(c.model, "kaplan_attn")
        assert c.train.batch_size == max(1, round(0.58 * D_plan**0.571 / 64))
    nd = grids.nd_grid_runs(BASE, [(16, 1), (32, 1)], [2**14, 2**16], head_dim=16, lr_rule=rule)
    lrs = {(r.model.n_params_nonembedding, r.total_tokens): r.train.lr for r in nd}
    assert len(set(lrs.values())) == 4  # per N and per D
    # Without rules the grids are what they were: base LR, nothing recorded.
    old = grids.nd_grid_runs(BASE, [(16, 1)], [2**14], head_dim=16)
    assert old[0].train.lr == BASE.train.lr and old[0].train.lr_rule == ""


def test_rule_descriptions_do_not_change_run_ids():
    """How the LR was chosen is provenance: the same training is the same run, and runs from
    before the rule fields keep their IDs."""
    assert RunConfig().run_id() == "dbeee0188ec7"
    a = BASE.replace(**{"train.lr": 0.01, "train.lr_rule": "constant 0.01"})
    b = BASE.replace(**{"train.lr": 0.01, "train.lr_rule": "0.5·N^-0.5"})
    assert a.run_id() == b.run_id() == BASE.replace(**{"train.lr": 0.01}).run_id()
    assert a.to_dict()["train"]["lr_rule"] == "constant 0.01"  # recorded in config.json


def test_lr_grid_is_centred_on_the_rule_and_stays_one_vmapped_group():
    factors = [0.5, 1.0, 2.0]
    runs = grids.lr_grid_runs(
        BASE, [(16, 1), (32, 2)], factors, tokens=2**14, head_dim=16, lr_rule=LR_STUDY_TINY
    )
    assert len(runs) == 6
    for r in runs:
        centre = LR_STUDY_TINY(r.model.n_params_nonembedding, r.total_tokens, r.tokens_per_step)
        assert min(abs(r.train.lr / centre - f) for f in factors) < 1e-9
        assert r.train.lr_rule.startswith("grid ×[0.5, 1, 2] around 4.94")
    small = [r for r in runs if r.model.d_model == 16]
    assert all(train.compatible(small[0], r) for r in small)
    # Without a rule, lrs are absolute LRs (the old signature).
    plain = grids.lr_grid_runs(BASE, [(16, 1)], [1e-3, 2e-3], head_dim=16)
    assert [r.train.lr for r in plain] == [1e-3, 2e-3]


def test_explain_tabulates_values_intervals_and_warnings():
    base = BASE.replace(**{"train.batch_size": 8})  # 512 tokens/step, as the LR study
    runs = grids.nd_grid_runs(
        base, [(16, 1), (128, 2)], [76800], head_dim=16, lr_rule=LR_STUDY_TINY
    )
    t = explain(runs, LR_STUDY_TINY, StepLaw().batch)
    n_big = runs[1].model.n_params_nonembedding
    assert n_big > 1.25 * LR_STUDY_TINY.domain.N[1]  # beyond the largest size measured
    assert list(t["lr"]) == pytest.approx(list(t["rule_lr"]))
    assert (t["rule_lr_q5"] < t["lr"]).all() and (t["lr"] < t["rule_lr_q95"]).all()
    assert t["warnings"].iloc[0] == "" and f"N={n_big:.2e}" in t["warnings"].iloc[1]
    assert t["batch_warnings"].str.contains("below the measured").all()
