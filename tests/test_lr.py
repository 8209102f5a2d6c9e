"""LR sensitivity: planted per-size optima and their drift with N recovered (~3 s)."""

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import plant_run

from jaxscale.analysis import lr_sensitivity as lr
from jaxscale.cli import lr as lr_cli
from jaxscale.config import ModelConfig, RunConfig, TrainConfig

NS = np.array([1e4, 1e5, 1e6, 1e7])
GRID = 1e-3 * 2.0 ** np.arange(8)


def _vertex(N):
    return math.log10(0.02) - 0.25 * math.log10(N / 1e4)  # LR* = 0.02 (N/1e4)^-0.25


def _points(rng, sd=0.003):
    rows = []
    for N in NS:
        for x in np.log10(GRID):
            loss = 3.0 - 0.1 * math.log10(N) + 0.4 * (x - _vertex(N)) ** 2 + rng.normal(0, sd)
            rows.append({"N": N, "B": 32, "lr": 10**x, "loss": loss})
    return pd.DataFrame(rows)


def test_planted_optimum_and_drift_recovered():
    st = lr.analyse_points(_points(np.random.default_rng(0)))
    for _, r in st.optima.iterrows():
        assert r["log10_lr_opt"] == pytest.approx(
            _vertex(r["N"]), abs=4 * r["log10_lr_opt_se"] + 0.02
        )
    d = st.drift_N
    assert d["exponent"] == pytest.approx(-0.25, abs=3 * d["exponent_se"] + 0.02)
    # basin of 1%: 2 sqrt(0.01 L* / 0.4) decades
    r = st.optima.iloc[0]
    assert r["width_decades"] == pytest.approx(2 * math.sqrt(0.01 * r["loss_opt"] / 0.4), rel=0.1)


def test_diverged_runs_are_excluded_and_edges_flagged():
    pts = _points(np.random.default_rng(1))
    pts.loc[pts["lr"] == GRID[-1], "loss"] = np.inf  # the largest LR diverged everywhere
    edge = pd.DataFrame(
        {"N": 5e3, "B": 32, "lr": GRID[:4], "loss": 3 - 0.1 * np.log10(GRID[:4])}
    )  # still falling at the top
    st = lr.analyse_points(pd.concat([pts, edge]))
    assert st.points["diverged"].sum() == len(NS)
    assert bool(st.optima.set_index("N").loc[5e3, "edge"])
    assert np.isfinite(st.drift_N["exponent"])


def test_cli_on_a_results_dir(tmp_path, capsys):
    rng = np.random.default_rng(2)
    for w in (32, 64, 128):
        for rate in GRID:
            cfg = RunConfig(
                model=ModelConfig.from_width_depth(w, 2, head_dim=16),
                train=TrainConfig(lr=float(rate)),
            )
            N = cfg.model.n_params_nonembedding
            loss = 3 + 0.3 * (math.log10(rate) - _vertex(N)) ** 2 + rng.normal(0, 0.002)
            summary = {"status": "done", "loss": loss, "tokens": 1000, "steps": 10}
            plant_run(tmp_path, cfg, summary=summary)
    p = argparse.ArgumentParser()
    lr_cli.add_parser(p.add_subparsers())
    assert lr_cli.run(p.parse_args(["lr", str(tmp_path)])) == 0
    out = json.loads((tmp_path / "analyses" / "lr.json").read_text())
    assert len(out["optima"]) == 3
    assert (tmp_path / "analyses" / "lr.svg").exists()
    assert "Drift with N" in capsys.readouterr().out
    with pytest.raises(ValueError, match=">= 3"):
        lr.fit_lr_parabola([1e-3, 2e-3], [3.0, 2.9])


def test_vertex_outside_the_fitted_lrs_is_flagged_extrapolated(capsys):
    """One size's best LR is interior, but its window parabola puts the vertex beyond the LRs
    it used (a noisy, slowly falling basin): flagged EXTRAPOLATED, printed, out of the drift."""
    pts = _points(np.random.default_rng(0))
    y = [3.0761, 3.0448, 3.0262, 3.0327, 2.9944, 2.996, 2.9953, 3.0077]  # best at GRID[4]
    odd = pd.DataFrame({"N": 3e3, "B": 32, "lr": GRID, "loss": y})
    st = lr.analyse_points(pd.concat([pts, odd]))
    f = st.fits[(3000, 32)]
    assert f.lo < math.log10(GRID[4]) < f.hi and not f.lo <= f.vertex <= f.hi
    o = st.optima.set_index("N")
    assert bool(o.loc[3000, "extrapolated"]) and not bool(o.loc[3000, "edge"])
    assert not o.drop(index=3000)["extrapolated"].any()
    assert st.drift_N["n_sizes"] == len(NS)  # the planted sizes only
    assert "EXTRAPOLATED: vertex" in st.describe()
    assert "EXTRAPOLATED" not in lr.analyse_points(pts).describe()


def test_repeated_lrs_window_over_distinct_lrs():
    """Three seeds per LR: the window counts distinct LRs and the parabola uses every run."""
    rng = np.random.default_rng(4)
    x = np.repeat(np.log10(GRID), 3)
    y = 3 + 0.4 * (x - math.log10(0.02)) ** 2 + rng.normal(0, 0.003, x.size)
    f = lr.fit_lr_parabola(10**x, y)
    assert f.dof == 5 * 3 - 3  # 5 distinct LRs (best ± 2) × 3 seeds, minus 3 coefficients
    assert f.vertex == pytest.approx(math.log10(0.02), abs=4 * f.vertex_se)


def test_printed_optima_carry_intervals_and_missing_drifts_say_why():
    """Every printed optimum has its 90% interval; a drift that needs two sizes and has one is
    not printed as nan but refused with what to run; two sizes carry a warning."""
    pts = _points(np.random.default_rng(5))
    text = lr.analyse_points(pts).describe()
    st = lr.analyse_points(pts)
    f = st.fits[(int(NS[0]), 32)]
    lo, hi = f.vertex_interval(0.9)
    assert f"[90%: {10**lo:.3g}, {10**hi:.3g}]" in text
    e, se = st.drift_N["exponent"], st.drift_N["exponent_se"]
    assert f"N^{e:.3f} [90%: {e - lr.Z90 * se:.3f}, {e + lr.Z90 * se:.3f}]" in text
    one = lr.analyse_points(pts[pts["N"] == NS[0]]).describe()
    assert "nan" not in one and "Drift with N (B=32, 1 size(s)): not measured" in one
    two = lr.analyse_points(pts[pts["N"] <= NS[1]]).describe()
    assert "from 2 sizes: the power-law form is assumed" in two
