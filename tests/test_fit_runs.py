"""The fitter on a real run-store layout: only finished runs are fitted, C under a convention."""

import numpy as np
import pytest
from conftest import plant_run

from jaxscale.analysis import fit
from jaxscale.config import ModelConfig, RunConfig, TrainConfig
from jaxscale.core import flops


def _write_run(root, width, depth, steps, status, loss):
    cfg = RunConfig(
        model=ModelConfig.from_width_depth(width, depth, head_dim=16, context_length=64),
        train=TrainConfig(steps=steps, batch_size=8, warmup_steps=0),
    )
    tokens = steps * cfg.tokens_per_step
    summary = {
        "status": status,
        "run_id": cfg.run_id(),
        "loss": loss,
        "tokens": tokens,
        "steps": steps,
    }
    plant_run(root, cfg, summary=summary)
    return cfg, tokens


def test_load_fit_data_keeps_only_done_runs(tmp_path, capsys):
    rows = []
    for i, (w, dpt) in enumerate([(16, 1), (32, 1), (32, 2), (48, 2), (64, 2), (64, 3)]):
        for steps in (100, 400):
            status = "done"
            if (i, steps) == (0, 100):
                status = "diverged"
            elif (i, steps) == (1, 400):
                status = "failed"
            cfg, tokens = _write_run(tmp_path, w, dpt, steps, status, 3.0 - 0.1 * i)
            rows.append((cfg, tokens, status))
    with pytest.warns(UserWarning, match="excluding 2 unfinished run"):
        df = fit.load_fit_data(tmp_path, flops_convention="chinchilla")
    assert "1 diverged" in capsys.readouterr().out
    done = [(c, t) for c, t, s in rows if s == "done"]
    assert len(df) == len(done) == 10
    want = sorted(flops.flops_per_token(c.model, "chinchilla") * t for c, t in done)
    np.testing.assert_allclose(sorted(df["C"]), want)
    assert set(df["N"]) == {c.model.n_params_nonembedding for c, _ in done}
