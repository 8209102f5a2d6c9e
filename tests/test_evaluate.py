"""Evaluation of trained runs and the loss-by-position study (~35 s: one tiny real run)."""

import json

import numpy as np
import pytest

from jaxscale import cli
from jaxscale.analysis import position
from jaxscale.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.core import evaluate
from jaxscale.runs.rundir import RunDir


def test_planted_position_power_law_recovered():
    rng = np.random.default_rng(0)
    t = np.arange(1, 257, dtype=float)
    y = 2.0 + 1.5 * t**-0.6 + rng.normal(0, 0.003, t.size)
    y[0] = 4.0  # the first-token exception: far above the power law's value 3.5 at t=1
    f = position.fit_position(y, t_min=2, se_by_pos=np.full(t.size, 0.003))
    assert f.alpha == pytest.approx(0.6, abs=3 * f.se["alpha"] + 0.01)
    assert f.L_inf == pytest.approx(2.0, abs=3 * f.se["L_inf"] + 0.01)
    assert f.A == pytest.approx(1.5, rel=0.05)
    assert f.first_token_excess == pytest.approx(0.5, abs=0.03)
    assert f.rmse < 0.005


def test_position_fit_never_lets_loss_rise_with_context():
    f = position.fit_position(3.0 - 0.001 * np.arange(64))  # tiny linear fall, no power law
    assert f.A >= 0 and f.L_inf >= 0


def test_planted_scaling_exponent_per_position():
    N = np.array([1e4, 1e5, 1e6])
    a_T = np.linspace(0.01, 0.08, 32)
    Y = 5.0 * N[:, None] ** -a_T[None, :]
    np.testing.assert_allclose(position.position_exponents(N, Y), a_T, atol=1e-10)


def test_bad_inputs_are_readable(tmp_path):
    with pytest.raises(ValueError, match=">= 5 positions"):
        position.fit_position([3.0, 2.9, 2.8])
    with pytest.raises(FileNotFoundError, match="config.json"):
        position.load_evals(tmp_path)
    (tmp_path / "r").mkdir()
    cfg = RunConfig()
    (tmp_path / "r" / "config.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        evaluate.load_params(RunDir(tmp_path / "r"))
    with pytest.raises(ValueError, match="unknown eval set"):
        evaluate.eval_tokens("no-such-set", cfg)


def test_eval_cli_on_a_real_run(tmp_path, capsys):
    from jaxscale.core import train

    cfg = RunConfig(
        model=ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, context_length=16),
        data=DataConfig(max_bytes=300_000),
        train=TrainConfig(
            batch_size=4,
            steps=12,
            warmup_steps=2,
            eval_every=12,
            eval_batches=2,
            checkpoint_every=12,
        ),
    )
    run = tmp_path / "res" / cfg.run_id()
    s = train.train(cfg, RunDir(run), progress=False)
    text = tmp_path / "mine.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 400)
    code = cli.main(
        [
            "eval",
            str(tmp_path / "res"),
            "--sets",
            f"stdlib,{text}",
            "--batches",
            "8",
            "--per-position",
            "--out",
            str(tmp_path / "an"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    ev = json.loads((run / "eval.json").read_text())
    assert ev["step"] == 12 and set(ev["sets"]) == {"stdlib", str(text)}
    st = ev["sets"]["stdlib"]
    assert len(st["loss_by_pos"]) == 16 and st["n_eval_tokens"] == 8 * 4 * 16
    assert np.mean(st["loss_by_pos"]) == pytest.approx(st["loss"], rel=1e-5)
    # Same model, same held-out split, more windows: close to training's own eval loss.
    assert st["loss"] == pytest.approx(s["loss"], abs=0.15)
    # Repetitive English text is a different distribution from Python source.
    assert ev["sets"][str(text)]["loss"] != pytest.approx(st["loss"], abs=1e-3)
    assert (tmp_path / "an" / "position.png").stat().st_size > 0
    assert (tmp_path / "an" / "position.svg").exists()
    pos = json.loads((tmp_path / "an" / "position.json").read_text())
    assert pos["runs"][0]["N"] == cfg.model.n_params_nonembedding
    assert "L_inf" in out
