"""Distribution-shift offsets: planted constant offset recovered with honest intervals (~3 s)."""

import argparse
import json

import numpy as np
import pytest
from conftest import plant_run

from jaxscale.analysis import shift
from jaxscale.cli import shift as shift_cli
from jaxscale.config import ModelConfig, RunConfig


def _planted(rng, n=6, offset=0.35, slope=1.0, sd=0.01):
    l_in = 3.0 - 0.25 * np.log10(np.geomspace(1e4, 1e7, n))
    return l_in, offset + 3.0 * (1 - slope) + slope * l_in + rng.normal(0, sd, n)


def test_planted_offset_recovered_and_interval_covers_truth():
    rng = np.random.default_rng(0)
    l_in, l_ood = _planted(rng)
    f = shift.fit_offset(l_in, l_ood)
    assert f.offset_ci[0] < 0.35 < f.offset_ci[1]
    assert f.offset == pytest.approx(0.35, abs=0.02)
    assert f.slope_ci[0] < 1.0 < f.slope_ci[1]
    assert f.to_dict()["constant_offset_consistent"]


def test_offset_interval_has_nominal_coverage():
    rng = np.random.default_rng(1)
    hits = [
        (lambda f: f.offset_ci[0] < 0.35 < f.offset_ci[1])(shift.fit_offset(*_planted(rng)))
        for _ in range(400)
    ]
    assert 0.92 < np.mean(hits) < 0.98  # 95% nominal; binomial sd ~1.1%


def test_changing_offset_is_detected():
    l_in, l_ood = _planted(np.random.default_rng(2), n=8, slope=1.6, sd=0.005)
    f = shift.fit_offset(l_in, l_ood)
    assert f.slope == pytest.approx(1.6, abs=0.1)
    assert not f.to_dict()["constant_offset_consistent"]


def test_cli_on_a_results_dir(tmp_path, capsys):
    rng = np.random.default_rng(3)
    for i, w in enumerate((16, 32, 64, 128)):
        cfg = RunConfig(model=ModelConfig.from_width_depth(w, 2, head_dim=16))
        run = plant_run(tmp_path, cfg)
        base = 3.0 - 0.3 * i
        sets = {"stdlib": base, "prose": base + 0.5 + rng.normal(0, 0.01)}
        run.write_eval(
            {
                "run_id": cfg.run_id(),
                "name": "x",
                "step": 10,
                "n_params_nonembedding": cfg.model.n_params_nonembedding,
                "sets": {k: {"loss": v, "loss_se": 0.01} for k, v in sets.items()},
            }
        )
    p = argparse.ArgumentParser()
    shift_cli.add_parser(p.add_subparsers())
    assert shift_cli.run(p.parse_args(["shift", str(tmp_path)])) == 0
    out = json.loads((tmp_path / "analyses" / "shift.json").read_text())
    assert out["sets"]["prose"]["offset"] == pytest.approx(0.5, abs=0.03)
    assert (tmp_path / "analyses" / "shift.png").exists()
    assert "prose" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not evaluated"):
        shift.analyse(tmp_path, reference="site-packages")
