"""Envelope, isoFLOP parabola vertices and their SEs, plots, and the quickstart end to end.

Fast tests ~4 s; the slow end-to-end quickstart (tiny) test ~30-60 s on 2 cores.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxscale.analysis import frontier
from jaxscale.runs.study import load_study

ROOT = Path(__file__).resolve().parents[1]


def _points(*runs: list[tuple[float, float]]) -> pd.DataFrame:
    rows = [
        {"run_id": f"r{i}", "step": j, "C": c, "loss": y}
        for i, pts in enumerate(runs)
        for j, (c, y) in enumerate(pts)
    ]
    return pd.DataFrame(rows)


def test_envelope_hand_example():
    a = [(1, 5.0), (2, 4.0), (4, 3.5)]
    b = [(1.5, 4.5), (3, 3.0), (6, 2.9)]
    env = frontier.envelope(_points(a, b))
    assert list(zip(env["C"], env["loss"])) == [(1, 5.0), (1.5, 4.5), (2, 4.0), (3, 3.0), (6, 2.9)]


def test_envelope_matches_pareto_definition_on_random_curves():
    rng = np.random.default_rng(0)
    runs = []
    for k in range(6):  # power-law curves with different offsets, plus noise
        C = np.geomspace(1e8, 1e11, 15) * rng.uniform(0.5, 2)
        y = 2 + (k + 1) * (C / 1e8) ** -0.3 + rng.normal(0, 0.05, C.size)
        runs.append(list(zip(C, y)))
    pts = _points(*runs)
    env = frontier.envelope(pts)
    P = pts[["C", "loss"]].to_numpy()
    dominated = [any((q[0] <= p[0]) and (q[1] <= p[1]) and (q != p).any() for q in P) for p in P]
    expect = sorted(map(tuple, P[~np.array(dominated)]))
    assert sorted(zip(env["C"], env["loss"])) == expect
    assert (np.diff(env["loss"]) < 0).all() and (np.diff(env["C"]) > 0).all()


def test_parabola_recovers_planted_vertex_and_se_is_calibrated():
    rng = np.random.default_rng(1)
    x = np.linspace(4.0, 6.0, 7)  # log10 N
    truth = 5.3
    hits, errs = 0, []
    for _ in range(300):
        y = 3.0 + 0.4 * (x - truth) ** 2 + rng.normal(0, 0.01, x.size)
        fit = frontier.fit_parabola(x, y)
        errs.append(fit.vertex - truth)
        hits += abs(fit.vertex - truth) <= fit.vertex_se
    assert abs(np.mean(errs)) < 0.01 and np.std(errs) < 0.05
    assert 0.58 <= hits / 300 <= 0.78  # ±1 SE covers ~68% (t with 4 dof: ~63%)


def _synthetic_runs(budgets, *, tagged: bool, a: float = 0.5) -> pd.DataFrame:
    """isoFLOP runs with loss = E + 0.3·(log10 N − log10 N*(C))², N*(C) = 0.1·C^a, D = C/6N."""
    rows = []
    for C in budgets:
        n_star = 0.1 * C**a
        for off in (-0.6, -0.3, 0.0, 0.2, 0.5):
            N = n_star * 10**off * 1.07  # sizes not centred exactly on the optimum
            loss = 2.0 + 1 / math.log10(C) + 0.3 * math.log10(N / n_star) ** 2
            tag = f"C{C:.3e}_" if tagged else ""
            rows.append(
                {
                    "run_id": f"{C:.0e}-{off}",
                    "name": f"iso_{tag}N{N:.0f}",
                    "status": "done",
                    "loss": loss,
                    "n_params": N * 1.2,
                    "n_params_nonembedding": N,
                    "tokens": C / (6 * N),
                    "flops_kaplan": C * (1 + 0.002 * off),
                }
            )
    rows.append({**rows[0], "run_id": "dead", "status": "diverged", "loss": np.nan})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("tagged", [True, False])
def test_isoflop_optima_recover_planted_law(tagged):
    budgets = [1e15, 1e16, 1e17, 1e18]
    runs = _synthetic_runs(budgets, tagged=tagged)
    optima, fits = frontier.isoflop_optima(runs, "kaplan")
    assert len(optima) == 4 and (optima["n_runs"] == 5).all()
    np.testing.assert_allclose(optima["N_opt"], 0.1 * np.array(budgets) ** 0.5, rtol=1e-6)
    np.testing.assert_allclose(optima["D_opt"], np.array(budgets) / (6 * optima["N_opt"]))
    np.testing.assert_allclose(optima["tokens_per_param"], optima["D_opt"] / optima["N_opt"])
    assert optima["interior"].all()
    assert optima["log10_N_opt_se"].max() < 1e-6  # noiseless parabola: zero residual
    a, _ = frontier.power_law(optima["C"], optima["N_opt"])
    b, _ = frontier.power_law(optima["C"], optima["D_opt"])
    assert a == pytest.approx(0.5, abs=1e-3) and b == pytest.approx(0.5, abs=1e-3)
    # the best run is the sampled size nearest the optimum (offset 0 → N*·1.07)
    np.testing.assert_allclose(optima["best_N"], 0.1 * np.array(budgets) ** 0.5 * 1.07)


def test_vertex_outside_sampled_sizes_is_flagged():
    runs = _synthetic_runs([1e16], tagged=True)
    runs = runs[runs["n_params_nonembedding"] > 0.1 * 1e8]  # N* = 1e7: only the right flank
    with pytest.warns(UserWarning, match="extrapolation"):
        optima, _ = frontier.isoflop_optima(runs, "kaplan")
    assert not optima["interior"].item()


def test_save_writes_tables_and_plots(tmp_path):
    runs = _synthetic_runs([1e15, 1e16, 1e17], tagged=True)
    curves = []
    for _, r in runs[runs["status"] == "done"].iterrows():
        for s in range(1, 6):
            curves.append(
                {
                    "run_id": r["run_id"],
                    "step": s,
                    "tokens": r["tokens"] * s / 5,
                    "loss": r["loss"] + 1 / s,
                    "eval_loss": r["loss"] + 1 / s,
                    "lr": 1e-3,
                    "flops_kaplan": r["flops_kaplan"] * s / 5,
                }
            )
    fr = frontier.analyse((runs, pd.DataFrame(curves)), "kaplan")
    written = fr.save(tmp_path)
    for name in ("loss_vs_compute", "isoflop", "optima"):
        for ext in ("png", "svg"):
            assert (tmp_path / f"{name}.{ext}").stat().st_size > 1000
    assert {p.name for p in written} >= {"optima.csv", "envelope.csv", "frontier.json"}
    assert len(pd.read_csv(tmp_path / "optima.csv")) == 3
    assert fr.exponents()["a"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.slow
def test_quickstart_tiny_end_to_end(tmp_path):
    """`jaxscale sweep run experiments/quickstart.py --setting tiny` then `jaxscale frontier`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = tmp_path / "res"
    cli = [sys.executable, "-m", "jaxscale.cli"]
    run = subprocess.run(
        [
            *cli,
            "sweep",
            "run",
            str(ROOT / "experiments/quickstart.py"),
            "--setting",
            "tiny",
            "--results",
            str(res),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    status = subprocess.run(
        [
            *cli,
            "sweep",
            "status",
            str(ROOT / "experiments/quickstart.py"),
            "--setting",
            "tiny",
            "--results",
            str(res),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    n_runs = len(load_study(ROOT / "experiments/quickstart.py").runs("tiny"))
    assert status.returncode == 0 and f"done: {n_runs}" in status.stdout, status.stdout
    fr = subprocess.run(
        [*cli, "frontier", str(res), "--out", str(tmp_path / "fr")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fr.returncode == 0, fr.stderr[-3000:]
    optima = pd.read_csv(tmp_path / "fr" / "optima.csv")
    assert len(optima) == 3 and optima["n_runs"].sum() == n_runs
    assert (tmp_path / "fr" / "loss_vs_compute.png").exists()
