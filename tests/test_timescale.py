"""AdamW timescale τ = B/(ηλD): recorded per run, gridded in studies, τ_opt(D/N) recovered from a
planted law with covering 90% intervals (NUTS: Laplace is refused for this law), grid-edge and
EXTRAPOLATED optima flagged, seeds pooled, `jaxscale timescale` end to end on the planted runs of
experiments/wd.py."""

import argparse
import importlib.util
import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import plant_run

from jaxscale.analysis import timescale as T
from jaxscale.cli import timescale as timescale_cli
from jaxscale.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.core import train
from jaxscale.runs import grids
from jaxscale.runs import results as results_lib
from jaxscale.runs.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
NS, DS = [1e5, 3e5, 1e6], [2e6, 8e6, 3.2e7]  # nine distinct D/N
FAST_NUTS = {"chains": 2, "warmup": 300, "draws": 500}


def test_planted_timescale_law_recovered_with_covering_intervals():
    """Planted τ_opt = 0.4·(D/N)^-0.3 (not Bergsma's): both 90% intervals cover the truth,
    every per-(N, D) optimum is bracketed, and Bergsma's exponent is rejected. A Laplace
    request runs NUTS: on one N × 5 D/N, seeds 0-39, Laplace covered coef 28 and k 27 times in
    40, NUTS 18 and 19 in 20 (seeds 0-19)."""
    pl = T.PlantedTimescale(coef=0.4, k=-0.3, noise=0.002)
    st = T.analyse_points(pl.points(NS, DS, seed=3), method="laplace", **FAST_NUTS)
    assert st.law is not None and st.law.result.ok and st.law.method == "nuts"
    assert "timescale_tpp: Laplace refused, fitted with NUTS" in st.describe()
    t = st.table().set_index("param")
    for p, truth in (("coef", 0.4), ("k", -0.3)):
        assert t.loc[p, "q5"] <= truth <= t.loc[p, "q95"], t
    assert not t.loc["k", "covers_bergsma"]
    assert not st.optima["edge"].any()
    truth = pl.tau_opt(st.optima["N"], st.optima["D"])
    inside = (st.optima["tau_lo"] <= truth) & (truth <= st.optima["tau_hi"])
    assert inside.mean() >= 0.7, st.optima[["N", "D", "tau_lo", "tau_opt", "tau_hi"]]
    assert "outside the interval" in st.describe()


def test_edge_of_grid_optimum_is_flagged_not_reported():
    """A τ grid that stops below the optimum: each (N, D) is an edge, printed without a
    τ_opt number, and the law is not fitted."""
    pl = T.PlantedTimescale()
    pts = pl.points(NS[:2], DS[:2], tau_factors=4.0 ** np.arange(-5, 0), seed=4)
    st = T.analyse_points(pts, method="laplace")
    assert st.optima["edge"].all() and st.optima["tau_opt"].isna().all()
    assert st.law is None and st.table().empty
    text = st.describe()
    assert "τ_opt=" not in text and text.count("τ_opt not bracketed") == 4
    assert "is the grid's largest" in text
    assert "timescale_tpp not fitted: 0 distinct bracketed" in text
    with pytest.raises(ValueError, match="columns"):
        T.analyse_points(pts.drop(columns="wd"))


def test_basin_flatter_than_its_noise_is_shown_with_a_warning_not_fitted():
    """Noise 10× the basin's depth: optima come with intervals wider than the grid, are
    printed with a warning, and the law is not fitted on them."""
    pl = T.PlantedTimescale(noise=0.2, curv=0.02)
    st = T.analyse_points(pl.points(NS, DS, seed=5), method="laplace", **FAST_NUTS)
    wide = st.optima[~st.optima["edge"] & ~st.optima["identified"]]
    assert len(wide) >= 1
    assert "WARNING: 90% interval wider than the τ grid" in st.describe()
    if st.law is not None:
        assert len(st.law.result.loss) <= int((~st.optima["edge"] & st.optima["identified"]).sum())


def test_no_decay_baseline_beating_every_lambda_is_an_edge():
    """λ = 0 is the τ grid's far end: when it wins, τ_opt is not bracketed (it may be ∞)."""
    pl = T.PlantedTimescale(noise=0.0)
    pts = pl.points([1e5], [2e6], tau_factors=4.0 ** np.arange(-2, 3))
    base = pts.iloc[[0]].assign(wd=0.0, loss=pts["loss"].min() - 0.01)
    st = T.analyse_points(pd.concat([pts, base], ignore_index=True), method="laplace")
    assert math.isinf(st.points["tau"].max())
    o = st.optima.iloc[0]
    assert o["loss_no_decay"] < o["best_loss"] and o["edge"] and math.isnan(o["tau_opt"])
    assert "no decay (λ = 0" in st.describe() and "τ_opt=" not in st.describe()


def test_seeds_pool_into_one_optimum_and_an_extrapolated_vertex_is_flagged():
    """Three seeds per τ enter one parabola (window in distinct τ); a cell whose best τ is
    interior but whose window parabola puts the vertex beyond the τ it used is EXTRAPOLATED:
    not bracketed, printed with the warning, left out of the law."""
    pl = T.PlantedTimescale(noise=0.003)
    pts = pd.concat([pl.points([1e5], [2e6], seed=s) for s in range(3)], ignore_index=True)
    B, lr, D = 2.0**14, 1e-3, 8e6
    taus = 0.1 * 2.0 ** np.arange(8)
    y = [3.0761, 3.0448, 3.0262, 3.0327, 2.9944, 2.996, 2.9953, 3.0077]  # best at taus[4]
    odd = pd.DataFrame({"N": 1e5, "D": D, "B": B, "lr": lr, "wd": B / (lr * taus * D), "loss": y})
    st = T.analyse_points(pd.concat([pts, odd], ignore_index=True), method="laplace")
    o = st.optima.set_index("D")
    assert o.loc[2e6, "n_runs"] == 15 and o.loc[2e6, "n_taus"] == 5
    assert st.fits[(100000, 2e6)].dof == 15 - 3 and bool(o.loc[2e6, "identified"])
    assert bool(o.loc[D, "edge"]) and math.isnan(o.loc[D, "tau_opt"])
    assert o.loc[D, "why"].startswith("EXTRAPOLATED")
    assert o.loc[D, "best_tau"] == pytest.approx(taus[4])
    assert "EXTRAPOLATED: the parabola's vertex" in st.describe()


def _cfg(wd: float, steps: int = 6) -> RunConfig:
    return RunConfig(
        model=ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, context_length=16),
        data=DataConfig(max_bytes=200_000),
        train=TrainConfig(
            batch_size=4, steps=steps, warmup_steps=1, lr=2e-3, weight_decay=wd, eval_every=6
        ),
    )


def test_tau_recorded_in_a_real_run_equals_b_over_eta_lambda_d(tmp_path):
    """A real 6-step run: summary and results table carry τ = B/(ηλD) with B and D in tokens."""
    cfg = _cfg(0.3)
    run = RunDir.of(tmp_path, cfg)
    s = train.train(cfg, run, progress=False)
    assert s["status"] == "done"
    B, D = 4 * 16, 6 * 4 * 16  # tokens per step, planned tokens
    tau = B / (2e-3 * 0.3 * D)
    assert s["adamw_tau"] == pytest.approx(tau, rel=1e-12)
    assert (s["peak_lr"], s["weight_decay"], s["planned_tokens"]) == (2e-3, 0.3, D)
    assert s["tokens_per_step"] == B
    assert run.read_summary()["adamw_tau"] == s["adamw_tau"]
    runs, _ = results_lib.load(tmp_path)
    assert runs.loc[0, "adamw_tau"] == pytest.approx(tau, rel=1e-12)
    # λ = 0: no timescale; JSON null in the summary, inf in the table.
    plant_run(tmp_path, _cfg(0.0), summary={**train._summary_base(_cfg(0.0)), "status": "done"})
    runs, _ = results_lib.load(tmp_path)
    assert math.isinf(runs.set_index("train.weight_decay").loc[0.0, "adamw_tau"])
    assert train._summary_base(_cfg(0.0))["adamw_tau"] is None


def test_decay_is_coupled_to_the_lr_as_tau_assumes():
    """With zero gradients the optimizer's update is λ·p, which the step multiplies by the
    scheduled LR η_t (tests/test_optimizer.py): the per-step decay is η_t·λ, as τ = B/(ηλD)
    assumes."""
    tc = _cfg(0.5, steps=40).train
    tx = train.make_optimizer(tc)
    p = {"w": jnp.full((3, 3), 2.0), "ln_scale": jnp.ones(3)}
    state = tx.init(p)
    zeros = {"w": jnp.zeros((3, 3)), "ln_scale": jnp.zeros(3)}
    for _ in range(3):
        u, state = tx.update(zeros, state, p)
        assert np.allclose(u["w"], 0.5 * 2.0, rtol=1e-6)
        assert np.allclose(u["ln_scale"], 0.0)  # no decay on norm scales


def test_wd_grid_in_tau_and_in_lambda():
    base = _cfg(0.1, steps=100)
    runs = grids.wd_grid_runs(base, [(16, 1), (32, 1)], [6400, 25600], taus=[0.1, 1.0], head_dim=8)
    assert len(runs) == 8
    for r in runs:
        assert r.adamw_timescale in (pytest.approx(0.1), pytest.approx(1.0))
        assert r.train.weight_decay == pytest.approx(
            r.tokens_per_step / (r.train.lr * r.adamw_timescale * r.total_tokens)
        )
    flat = grids.wd_grid_runs(base, [(16, 1)], [6400], wds=[0.0, 0.1], head_dim=8)
    assert [r.train.weight_decay for r in flat] == [0.0, 0.1]
    assert math.isinf(flat[0].adamw_timescale)
    with pytest.raises(ConfigError, match="exactly one"):
        grids.wd_grid_runs(base, [(16, 1)], [6400], wds=[0.1], taus=[1.0])
    with pytest.raises(ConfigError, match="> 0"):
        grids.wd_grid_runs(base, [(16, 1)], [6400], taus=[0.0])


def _study():
    spec = importlib.util.spec_from_file_location("wd_study", ROOT / "experiments/wd.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_timescale_cli_on_planted_tiny_study(tmp_path, capsys):
    """experiments/wd.py tiny's 150 configs (1 size × 5 D × (9 τ + λ = 0) × 3 seeds) planted
    as trained runs on Bergsma's law: `jaxscale timescale` brackets every optimum, fits the law
    with NUTS although Laplace was asked for, and writes every output."""
    runs = _study().runs("tiny")
    assert len(runs) == 150 and len({r.train.seed for r in runs}) == 3
    pl = T.PlantedTimescale(noise=0.001)
    rng = np.random.default_rng(0)
    for cfg in runs:
        N, D, tau = cfg.model.n_params_nonembedding, cfg.total_tokens, cfg.adamw_timescale
        loss = float(pl.loss(N, D, min(tau, 1e6))) + pl.noise * rng.standard_normal()
        plant_run(tmp_path, cfg, summary={"status": "done", "loss": loss})
    parser = argparse.ArgumentParser()
    timescale_cli.add_parser(parser.add_subparsers())
    argv = ["timescale", str(tmp_path), "--method", "laplace", "--out", str(tmp_path / "out")]
    assert timescale_cli.run(parser.parse_args([*argv, "--all-runs"])) == 0
    out = capsys.readouterr().out
    assert "τ_opt=" in out and "Bergsma" in out and "Laplace refused" in out
    saved = json.loads((tmp_path / "out" / "timescale.json").read_text())
    assert "tokens per step" in saved["convention"] and saved["fit"]["method"] == "nuts"
    assert len(saved["optima"]) == 5 and not any(o["edge"] for o in saved["optima"])
    assert {o["n_runs"] for o in saved["optima"]} == {27}
    k = next(r for r in saved["table"] if r["param"] == "k")
    assert abs(k["median"] - pl.k) < 0.05 and k["q5"] < k["median"] < k["q95"]
    for name in ("timescale.png", "timescale.svg", "timescale_optima.csv"):
        assert (tmp_path / "out" / name).exists()
