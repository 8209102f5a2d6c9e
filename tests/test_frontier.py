"""Envelope, isoFLOP profiles with 90% intervals and refusals, CSV input, plots, and the
quickstart end to end.

Fast tests ~4 s; the slow end-to-end quickstart (tiny) test ~30-60 s on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import plant_run

from jaxscale import cli
from jaxscale.analysis import frontier
from jaxscale.runs import selection
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


def _synthetic_runs(budgets, *, tagged: bool, a: float = 0.5, offs=(-0.6, -0.3, 0.0, 0.2, 0.5)):
    """isoFLOP runs with loss = E + 0.3·(log10 N − log10 N*(C))², N*(C) = 0.1·C^a, D = C/6N."""
    rows = []
    for C in budgets:
        n_star = 0.1 * C**a
        for off in offs:
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


def _analyse(runs, **kw):
    return frontier.analyse((runs, pd.DataFrame()), "kaplan", n_boot=200, **kw)


@pytest.mark.parametrize("tagged", [True, False])
def test_profiles_recover_planted_law_with_an_interval(tagged):
    budgets = [1e15, 1e16, 1e17, 1e18]
    fr = _analyse(_synthetic_runs(budgets, tagged=tagged))
    o = fr.optima
    assert len(o) == 4 and (o["n_runs"] == 5).all() and o["bracketed"].all()
    np.testing.assert_allclose(o["N_opt"], 0.1 * np.array(budgets) ** 0.5, rtol=1e-6)
    np.testing.assert_allclose(o["D_opt"], np.array(budgets) / (6 * o["N_opt"]), rtol=1e-6)
    np.testing.assert_allclose(o["tokens_per_param"], o["D_opt"] / o["N_opt"])
    assert fr.a.value == pytest.approx(0.5, abs=1e-3) and fr.b.value == pytest.approx(0.5, abs=1e-3)
    assert fr.a.lo - 1e-9 <= 0.5 <= fr.a.hi + 1e-9 and fr.a.n_vertices == 4
    line = fr.exponent_line()
    assert "a = 0.500 [" in line and "(90%)" in line and "kaplan FLOPs" in line
    np.testing.assert_allclose(o["best_N"], 0.1 * np.array(budgets) ** 0.5 * 1.07)


def test_best_run_at_the_smallest_size_is_not_bracketed():
    runs = _synthetic_runs([1e15, 1e16, 1e17, 1e18], tagged=True, offs=(0.05, 0.3, 0.6, 0.9))
    fr = _analyse(runs)
    assert not fr.optima["bracketed"].any()
    assert fr.optima["note"].str.contains("train smaller sizes").all()
    assert fr.optima["N_opt"].isna().all()  # no number where the data cannot give one
    assert fr.a is None and "0 bracketed isoFLOP vertices" in fr.refusal


def test_two_vertices_are_refused_and_nothing_prints_nan():
    runs = _synthetic_runs([1e15, 1e16], tagged=True)
    fr = _analyse(runs)
    assert fr.a is None and "needs 3" in fr.refusal
    text = fr.describe()
    assert "no exponent" in text and not re.search(r"\bnan\b", text, re.I)
    with pytest.warns(UserWarning, match="forced"):
        forced = _analyse(runs, force=True)
    assert forced.a.n_vertices == 2 and "FORCED" in forced.exponent_line()


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
    fr = frontier.analyse((runs, pd.DataFrame(curves)), "kaplan", n_boot=200)
    written = fr.save(tmp_path)
    for name in ("loss_vs_compute", "isoflop", "optima"):
        for ext in ("png", "svg"):
            assert (tmp_path / f"{name}.{ext}").stat().st_size > 1000
    assert {p.name for p in written} >= {"optima.csv", "envelope.csv", "frontier.json"}
    assert len(pd.read_csv(tmp_path / "optima.csv")) == 3
    meta = json.loads((tmp_path / "frontier.json").read_text())
    assert meta["a"]["value"] == pytest.approx(0.5, abs=1e-3) and meta["a"]["level"] == 0.9
    svg = (tmp_path / "isoflop.svg").read_text()
    assert "kaplan" in svg and "90%" in svg  # the convention and the interval level are named


def test_frontier_cli_takes_a_csv(tmp_path, capsys):
    runs = _synthetic_runs([1e15, 1e16, 1e17, 1e18], tagged=False)
    done = runs[runs["status"] == "done"]
    csv = tmp_path / "iso.csv"
    # Epoch's column names and no D: D = C / 6N, as fit.load_fit_data reads it.
    done.rename(columns={"n_params_nonembedding": "Model Size", "flops_kaplan": "Training FLOP"})[
        ["Model Size", "Training FLOP", "loss"]
    ].to_csv(csv, index=False)
    assert cli.main(["frontier", str(csv), "--out", str(tmp_path / "fr")]) == 0
    out = capsys.readouterr().out
    assert "a = 0.50" in out and "FLOPs as given in the table" in out, out
    assert len(pd.read_csv(tmp_path / "fr" / "optima.csv")) == 4
    assert not (tmp_path / "fr" / "loss_vs_compute.png").exists()  # a CSV has no curves


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
    runs = load_study(ROOT / "experiments/quickstart.py").runs("tiny")
    n_runs = len(runs)
    assert status.returncode == 0 and f"done: {n_runs}" in status.stdout, status.stdout
    fr = subprocess.run(
        [*cli, "frontier", str(res), "--out", str(tmp_path / "fr")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fr.returncode == 0, fr.stderr[-3000:]
    assert not re.search(r"\bnan\b", fr.stdout, re.I), fr.stdout  # refusals, never C^nan
    optima = pd.read_csv(tmp_path / "fr" / "optima.csv")
    # Every budget with 3 or more sizes is a profile; the others are listed, not fitted.
    sizes = Counter(re.search(r"C\d\.\d+e[+-]\d+", r.name).group() for r in runs)
    profiled = [n for n in sizes.values() if n >= 3]
    assert len(optima) == len(profiled) and optima["n_runs"].sum() == sum(profiled)
    assert "a profile needs 3" in fr.stdout or len(profiled) == len(sizes)
    assert (tmp_path / "fr" / "loss_vs_compute.png").exists()


STUDY = """
from jaxscale.config import ModelConfig, RunConfig, TrainConfig
from jaxscale.runs.grids import isoflop_runs

NAME = "edited"
SETTINGS = ("default",)


def runs(setting="default"):
    base = RunConfig(
        model=ModelConfig(context_length=64, vocab_size=257),
        train=TrainConfig(batch_size=4, lr={lr}, warmup_steps=0),
        name=NAME,
    )
    shapes = [(16, 1), (32, 1), (32, 2), (48, 2)]
    return isoflop_runs(base, [5e8, 1e9, 3e9], shapes, head_dim=16, min_steps=10, prefix=NAME)
"""


def _plant_study(root, path, lr):
    """A study file at path with train.lr = lr, and its runs planted (done) under root."""
    path.write_text(STUDY.replace("{lr}", repr(lr)))
    study = load_study(path)
    for cfg in study.runs():
        n = cfg.model.n_params_nonembedding
        loss = 2.0 + 0.3 * (math.log10(n) - 4.2) ** 2 + lr
        summary = {"status": "done", "loss": loss, "tokens": cfg.total_tokens, "steps": 10}
        plant_run(root, cfg, summary=summary)
    return study


def test_analyses_read_the_study_not_the_directory(tmp_path, capsys):
    """Issue 15: an edited study (new LR) rerun into the same directory leaves the old runs
    there; analyses use the study's runs and say how many others the directory holds."""
    res, path = tmp_path / "res", tmp_path / "study.py"
    _plant_study(res, path, 3e-3)
    new = _plant_study(res, path, 1e-3)  # the edit: every run_id changes
    n = len(new.runs())
    out_dir = ["--out", str(tmp_path / "fr")]

    assert cli.main(["frontier", str(res), *out_dir]) == 0
    out = capsys.readouterr().out
    assert f"no study recorded in {res}: using all {2 * n} runs" in out and "train.lr" in out
    assert f"{2 * n} final-loss points" in out

    assert cli.main(["frontier", str(res), "--study", str(path), *out_dir]) == 0
    out = capsys.readouterr().out
    assert f"using the {n} runs of study edited [default]" in out
    assert f"holds {n} other run(s), left out" in out and f"{n} final-loss points" in out

    selection.write_record(res, new, "default", new.runs())  # as `jaxscale study` does
    assert cli.main(["frontier", str(res), *out_dir]) == 0
    out = capsys.readouterr().out
    assert f"(recorded in {selection.RECORD})" in out and f"{n} final-loss points" in out
    assert cli.main(["frontier", str(res), "--all-runs", *out_dir]) == 0
    assert f"{2 * n} final-loss points" in capsys.readouterr().out
