"""Sample efficiency and L(N, S) extrapolation on planted learning curves (~15 s CPU: MAP fits)."""

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import plant_run

from jaxscale.analysis import sample_efficiency as eff
from jaxscale.cli import efficiency as eff_cli
from jaxscale.config import ModelConfig, RunConfig, TrainConfig

# Kaplan 2020 eq. 1.6 with their fitted exponents, scaled to small models.
NC, AN, SC, AS = 3e5, 0.3, 400.0, 0.6
STEPS, TPS = 2000, 1000  # steps per run, tokens per step


def _law(N, S):
    return (NC / N) ** AN + (SC / S) ** AS


def _frames(Ns, sd=0.01, seed=0, every=1):
    rng = np.random.default_rng(seed)
    runs, curves = [], []
    for i, N in enumerate(Ns):
        rid = f"r{i}"
        S = np.arange(1, STEPS + 1, every, dtype=float)
        loss = _law(N, S) * np.exp(rng.normal(0, sd, S.size))
        ev = np.where(S % 100 == 0, _law(N, S), np.nan)
        curves.append(
            pd.DataFrame(
                {"run_id": rid, "step": S, "tokens": S * TPS, "loss": loss, "eval_loss": ev}
            )
        )
        runs.append(
            {"run_id": rid, "status": "done", "n_params_nonembedding": N, "train.warmup_steps": 20}
        )
    return pd.DataFrame(runs), pd.concat(curves, ignore_index=True)


def test_first_crossing_interpolates_in_log_tokens():
    assert eff.first_crossing([10, 100, 1000], [4.0, 3.0, 2.0], 2.5) == pytest.approx(
        math.sqrt(100 * 1000)
    )
    assert eff.first_crossing([10, 100], [4.0, 3.0], 3.5) == pytest.approx(math.sqrt(1000))
    assert math.isnan(eff.first_crossing([10, 100], [4.0, 3.0], 2.0))


def test_planted_tokens_to_reach_recovered():
    Ns = [1e5, 3e5, 1e6, 3e6]
    runs, curves = eff.prepare_curves(*_frames(Ns, sd=0.0), loss="eval")
    target = 2.0
    table, laws = eff.tokens_to_reach(runs, curves, [target])
    for _, r in table.iterrows():
        true_S = SC / (target - (NC / r["N"]) ** AN) ** (1 / AS)
        assert r[f"D@{target:.4g}"] == pytest.approx(true_S * TPS, rel=0.08)
    assert laws["gamma"].iloc[0] > 0  # larger models need fewer tokens


def test_extrapolation_error_shrinks_with_observed_fraction():
    runs, curves = eff.prepare_curves(*_frames([1e5, 3e5, 1e6, 3e6], every=5))
    errors, params = eff.extrapolation_errors(runs, curves, (0.1, 0.8), max_points=30)
    s = eff.error_summary(errors).set_index("fraction")["median_abs_rel_error"]
    assert s[0.8] < s[0.1]
    assert s[0.8] < 0.01  # 80% of a clean power-law curve predicts its end to <1%
    assert params[0.8]["alpha_S"] == pytest.approx(AS, rel=0.1)
    assert params[0.8]["alpha_N"] == pytest.approx(AN, rel=0.1)


def test_cli_on_a_results_dir(tmp_path, capsys):
    for w in (16, 32, 64, 128):  # 4 runs x 30 points: same shape as above, one compile
        cfg = RunConfig(
            model=ModelConfig.from_width_depth(w, 2, head_dim=16),
            train=TrainConfig(steps=400, warmup_steps=10),
        )
        N = cfg.model.n_params_nonembedding
        rows = []
        for s in range(1, 401):
            L = (NC / N) ** AN + (SC / s) ** AS
            rows.append(
                {
                    "step": s,
                    "tokens": s * 4096,
                    "loss": L,
                    "lr": 1e-3,
                    **({"eval_loss": L} if s % 40 == 0 else {}),
                }
            )
        summary = {"status": "done", "loss": rows[-1]["loss"], "tokens": 400 * 4096, "steps": 400}
        plant_run(tmp_path, cfg, rows, summary)
    p = argparse.ArgumentParser()
    eff_cli.add_parser(p.add_subparsers())
    args = p.parse_args(["efficiency", str(tmp_path), "--fractions", "0.5"])
    assert eff_cli.run(args) == 0
    out = json.loads((tmp_path / "analyses" / "efficiency.json").read_text())
    assert out["extrapolation"][0]["fraction"] == 0.5
    assert (tmp_path / "analyses" / "efficiency.png").exists()
    assert "D_L" in capsys.readouterr().out
    with pytest.raises(ValueError, match="comma-separated"):
        eff_cli._floats("0.1,abc")
