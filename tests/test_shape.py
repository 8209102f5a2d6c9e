"""Width-vs-depth study: shape grids, the penalty fit on planted data, the CLI (~45 s on idle 2
cores: one short NUTS fit for recovery, Laplace elsewhere)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from jaxscale.analysis import width_depth as S
from jaxscale.analysis.synthetic import PenaltyTruth, write_synthetic_results
from jaxscale.config import ConfigError, ModelConfig, RunConfig, TrainConfig

warnings.filterwarnings("ignore", category=FutureWarning)

BASE = RunConfig(
    model=ModelConfig(context_length=256, vocab_size=32000), train=TrainConfig(batch_size=32)
)


def test_hand_counted_shape_and_head_rule():
    # (2 layers, d=64, head_dim 16, 4x GELU, RMSNorm): per layer 4d^2 + 2*d*4d + 2d = 49,280;
    # N = 2 * 49,280 + d (final norm) = 98,624 (Kaplan 2020 eq. 2.1 counting).
    shapes = S.feasible_shapes(ModelConfig(), 1e5, head_dim=16, max_rel_dev=0.02)
    s = next(s for s in shapes if (s.depth, s.width) == (2, 64))
    assert s.n_params == 98_624
    assert s.model.n_heads == 4 and s.model.head_dim == 16
    assert s.rel_dev == pytest.approx(-0.01376)
    assert S.candidate_widths(70, head_dim=32) == [8, 16, 24, 32, 64]


@pytest.mark.parametrize("head_dim,levels", [(64, (1e7, 1e8, 1e9)), (8, (1.5e5, 1e6))])
def test_grid_hits_target_within_reported_deviation_and_spans(head_dim, levels):
    shapes = S.shape_grid(BASE.model, levels, head_dim=head_dim, max_rel_dev=0.06)
    tab = S.grid_table(shapes)
    assert set(tab["N_target"]) == set(levels)
    for s in shapes:
        assert s.n_params == pytest.approx(s.n_target * (1 + s.rel_dev), rel=1e-12)
        assert abs(s.rel_dev) <= 0.06
        # fixed head_dim rule: width a multiple of head_dim, or a single narrower head
        if s.width >= head_dim:
            assert s.width % head_dim == 0 and s.model.head_dim == head_dim
        else:
            assert s.model.n_heads == 1
        assert s.model.d_ff == 4 * s.width
    for n in levels:
        r = tab.loc[tab["N_target"] == n, "aspect_ratio"]
        assert len(r) >= 4
        assert math.log10(r.max() / r.min()) >= 1.5


def test_fixed_heads_rule_and_unreachable_span_error():
    shapes = S.shape_grid(BASE.model, [1e8], head_rule="fixed_heads", n_heads=8, max_rel_dev=0.05)
    assert {s.model.n_heads for s in shapes} == {8}
    with pytest.raises(ConfigError, match="decades of aspect ratio"):
        S.shape_grid(BASE.model, [3e4], head_dim=64)


def test_runs_fixed_tokens_vs_fixed_compute():
    from jaxscale.runs.grids import planned_flops

    kw = dict(tokens_per_param=20, head_dim=64)
    tok = S.shape_runs(BASE, [1e7], **kw)
    cmp_ = S.shape_runs(BASE, [1e7], budget="compute", **kw)
    assert len({r.total_tokens for r in tok}) == 1
    assert all(S.level_tag(1e7) in r.name for r in tok)
    C = np.array([planned_flops(r, "kaplan_attn") for r in cmp_])
    assert C.max() / C.min() - 1 < 0.01  # equal up to whole-step rounding
    # deeper (smaller aspect ratio) shapes spend more attention FLOPs per token -> fewer tokens
    by_r = sorted(cmp_, key=lambda r: r.model.aspect_ratio)
    assert by_r[0].total_tokens < 0.95 * by_r[-1].total_tokens


def _synthetic(tmp_path, truth, levels, noise, seed=0):
    runs = S.shape_runs(BASE, levels, tokens_per_param=20, head_dim=64)
    return write_synthetic_results(runs, tmp_path / "res", truth, noise=noise, seed=seed)


def _z(draws: np.ndarray, true: float) -> float:
    """|median - truth| in posterior sds (90% interval width / 3.29)."""
    q5, q50, q95 = np.quantile(draws, [0.05, 0.5, 0.95])
    return abs(q50 - true) / ((q95 - q5) / 3.29)


@pytest.mark.filterwarnings("ignore:fit of:RuntimeWarning")  # 2 x 300 draws: ESS is flagged
def test_penalty_fit_recovers_planted_optimum_curvature_and_drift(tmp_path):
    truth = PenaltyTruth(r0=60.0, n0=1e8, drift=0.2, k=0.015)
    levels = (1e7, 1e8, 1e9)
    d = _synthetic(tmp_path, truth, levels, noise=0.002, seed=5)
    sf = S.fit_penalty(d, method="nuts", chains=2, warmup=300, draws=300, quiet=True)
    r_true = truth.r_star(np.array(levels))
    rs = sf.r_star()
    for i, r in enumerate(r_true):
        assert _z(rs[:, i], r) < 3 and np.median(rs[:, i]) == pytest.approx(r, rel=0.1)
    assert _z(sf.k(), truth.k) < 3 and np.median(sf.k()) == pytest.approx(truth.k, rel=0.15)
    pen4 = sf.penalties()["4x_wider"]["median"]
    assert pen4 == pytest.approx(truth.k * math.log(4) ** 2, rel=0.15)
    assert _z(sf.drift(), 0.2) < 3 and np.quantile(sf.drift(), 0.05) > 0
    text = sf.sentence()
    assert "r* drifts with scale" in text and "Kaplan" in text


def test_asymmetric_fit_separates_sides(tmp_path):
    truth = PenaltyTruth(r0=60.0, n0=1e8, k=0.03, k_deep=0.008)
    runs = S.shape_runs(BASE, (1e8, 1e9), tokens_per_param=20, head_dim=64, n_shapes=9)
    d = write_synthetic_results(runs, tmp_path / "res", truth, noise=0.002, seed=1)
    sf = S.fit_penalty(d, asymmetric=True, method="laplace", draws=2000)
    assert _z(sf.k("wide"), 0.03) < 3 and _z(sf.k("deep"), 0.008) < 3
    assert np.quantile(sf.k("deep"), 0.95) < np.quantile(sf.k("wide"), 0.05)


def test_untagged_runs_are_grouped_by_n_and_bad_input(tmp_path):
    import pandas as pd

    runs = pd.DataFrame(
        {
            "name": ["a", "b", "c", "d"],
            "status": ["done", "done", "done", "diverged"],
            "model.d_model": [64, 128, 512, 1024],
            "model.n_layers": [8, 2, 8, 2],
            "n_params_nonembedding": [1.0e5, 1.03e5, 2.5e7, 2.6e7],
            "loss": [3.0, 3.1, 2.5, np.nan],
        }
    )
    with pytest.warns(UserWarning, match="diverged"):
        df = S.shape_table(runs)
    assert df["level"].nunique() == 2 and len(df) == 3
    with pytest.raises(ValueError, match="distinct aspect ratio"):
        S.fit_penalty(df, method="map")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no shape runs"):
        S.shape_table(tmp_path / "empty")


def test_cli_prints_optimum_and_penalties_and_saves_plot(tmp_path, capsys):
    from jaxscale import cli

    truth = PenaltyTruth(r0=40.0, n0=1e7, drift=0.1, k=0.02)
    d = _synthetic(tmp_path, truth, (1e7, 1e8, 1e9), noise=0.003)
    out = tmp_path / "out"
    rc = cli.main(["shape", str(d), "--out", str(out), "--method", "laplace", "--draws", "1000"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "r*=" in text and "4x_wider" in text and "10x_deeper" in text
    assert "d ln r*/d ln N" in text and "Kaplan" in text
    for f in ("shape.png", "shape.svg", "shape_table.csv", "shape_summary.json"):
        assert (out / f).stat().st_size > 0
    rc = cli.main(["shape", str(tmp_path / "missing")])
    assert rc == 2
