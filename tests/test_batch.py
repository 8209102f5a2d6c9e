"""Critical batch: B_simple on a problem with known gradient statistics, hyperbola recovery, CLI.

Runtime ~35 s on 2 cores (three small NUTS fits). The squared gradient norms the real train step
logs, on one device and sharded over meshes, are checked in test_sharding.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import plant_run

from jaxscale.analysis import critical_batch as batch
from jaxscale.analysis.synthetic import PlantedSweep
from jaxscale.config import ModelConfig, RunConfig, TrainConfig
from jaxscale.core.noise import NoiseScaleEMA, noise_scale_terms

# Linear regression y = x.w* + eps, x ~ N(0, I_d), eps ~ N(0, s^2), loss 1/2 (x.w - y)^2.
# At w = w* + delta the per-example gradient is g = x (x.delta - eps), so (Isserlis)
# G = E g = delta and Sigma = (|delta|^2 + s^2) I + delta delta^T:
# |G|^2 = |delta|^2, tr(Sigma) = d (|delta|^2 + s^2) + |delta|^2 (McCandlish 2018 eq. 2.8).
D, NOISE_SD = 20, 1.0


def _closed_form(delta: np.ndarray) -> tuple[float, float]:
    g2 = float(delta @ delta)
    return g2, D * (g2 + NOISE_SD**2) + g2


def _microbatch_grads(rng, delta, steps, A, b):
    x = rng.standard_normal((steps, A, b, D))
    eps = NOISE_SD * rng.standard_normal((steps, A, b))
    r = x @ delta - eps
    return (x * r[..., None]).mean(2)  # [steps, A, D]: mean gradient of each microbatch


def test_linear_regression_closed_form_b_simple_unsharded():
    rng = np.random.default_rng(0)
    delta = rng.standard_normal(D)
    delta /= np.linalg.norm(delta)
    g2_true, tr_true = _closed_form(delta)
    b_true = tr_true / g2_true  # 41 for d=20, |delta|=1, s=1
    A, b, steps = 4, 16, 4000
    g_SxAxD = _microbatch_grads(rng, delta, steps, A, b)
    small = (g_SxAxD**2).sum(-1).mean(1)  # mean over microbatches of |G_small|^2, pre-averaging
    big = (g_SxAxD.mean(1) ** 2).sum(-1)  # |G_big|^2 of the averaged (full-batch) gradient
    terms = np.array([noise_scale_terms(s, g, b, A * b) for s, g in zip(small, big)])
    # Unbiased per step: their means match the closed forms within 4 standard errors.
    for k, truth in ((0, g2_true), (1, tr_true)):
        se = terms[:, k].std() / math.sqrt(steps)
        assert abs(terms[:, k].mean() - truth) < 4 * se, (k, terms[:, k].mean(), truth, se)
    ema = NoiseScaleEMA(b, A * b, decay=0.999)
    for s, g in zip(small, big):
        ema.update(s, g)
    # Stated tolerance: 10% (the EMA spans ~1000 steps; its ratio's sd is ~3% here).
    assert abs(ema.b_simple / b_true - 1) < 0.10, (ema.b_simple, b_true)
    # The naive ratio of biased norms, tr/|G_big|^2 without the correction, is far off.
    assert abs(tr_true / big.mean() / b_true - 1) > 0.3


def test_noise_scale_terms_rejects_bad_batch_sizes():
    with pytest.raises(ValueError, match="b_big > b_small"):
        noise_scale_terms(1.0, 0.5, 8, 8)


def test_steps_to_reach_interpolates_in_log_steps():
    s = np.array([10.0, 100.0])
    y = np.array([3.0, 2.0])
    # halfway in loss is halfway in ln(step): sqrt(10 * 100)
    assert batch.steps_to_reach(s, y, 2.5) == pytest.approx(math.sqrt(1000))
    assert math.isnan(batch.steps_to_reach(s, y, 1.5))  # never reached
    assert math.isnan(batch.steps_to_reach(s, y, 3.5))  # below target from the start


def test_hyperbola_fit_recovers_planted_s_min_e_min():
    s_min, b_noise = 200.0, 30.0
    B = np.array([4, 8, 16, 32, 64, 128, 256], float)
    rng = np.random.default_rng(3)
    S = s_min * (1 + b_noise / B) * np.exp(0.03 * rng.standard_normal(B.size))
    res = batch.fit_hyperbola(B, S, chains=4, warmup=1000, draws=1000)  # 7 points: one compile
    assert res.ok, res.problems
    for name, truth in (("S_min", s_min), ("B_noise", b_noise)):
        q5, q50, q95 = np.quantile(res.flat(name), [0.05, 0.5, 0.95])
        assert q5 < truth < q95, (name, q5, q95)
        assert abs(q50 / truth - 1) < 0.12, (name, q50)
    e_min = res.flat("S_min") * res.flat("B_noise")
    assert abs(np.median(e_min) / (s_min * b_noise) - 1) < 0.15


# Planted curves (synthetic.PlantedSweep): S_min(L) = 50/(L-1)^2, B_noise(L) = 54 L^-3 sequences.
PLANTED = PlantedSweep(b_star=54.0, inv_alpha_b=3.0, context_length=32)
CTX = PLANTED.context_length


def test_critical_batch_cli_on_planted_runs(tmp_path, capsys):
    from jaxscale.cli import main

    PLANTED.write(tmp_path / "res")
    targets = [1.5, 1.6, 1.75, 1.9]
    out = tmp_path / "cb"
    rc = main(
        [
            "critical-batch",
            str(tmp_path / "res"),
            "--targets",
            ",".join(map(str, targets)),
            "--chains",
            "4",
            "--warmup",
            "1000",
            "--draws",
            "1000",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    for L in targets:
        assert f"L={L:.4f} (7 runs): B_crit" in text
    assert "B_crit(L) = B*/L^(1/alpha_B)" in text and "Kaplan 2020" in text
    table = json.loads((out / "summary.json").read_text())
    for row in table["targets"]:
        truth = PLANTED.b_crit(row["target"])
        assert row["B_crit_q5"] * 0.9 < truth < row["B_crit_q95"] * 1.1, row
        assert abs(row["B_crit_q50"] / truth - 1) < 0.25, (row["B_crit_q50"], truth)
        assert row["B_crit_tokens_q50"] == pytest.approx(row["B_crit_q50"] * CTX)
    law = table["law"]
    assert (
        law["inv_alpha_B"]["q5"] < PLANTED.inv_alpha_b * 1.3
        and law["inv_alpha_B"]["q95"] > PLANTED.inv_alpha_b / 1.3
    )
    assert abs(law["B_star_tokens"]["q50"] / (PLANTED.b_star * CTX) - 1) < 0.4
    for stem in ("pareto", "b_crit", "b_simple"):
        for ext in ("png", "svg"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000


def test_critical_batch_rejects_mixed_models(tmp_path):
    PLANTED.write(tmp_path / "res", batch_sizes=(4, 8))
    cfg = RunConfig(
        model=ModelConfig(d_model=64, n_layers=1, n_heads=2, d_ff=64, context_length=CTX),
        train=TrainConfig(batch_size=16, steps=10, warmup_steps=0),
    )
    plant_run(tmp_path / "res", cfg)
    with pytest.raises(ValueError, match="fixed model.*model.d_model"):
        batch.analyse(tmp_path / "res", targets=[2.0])
