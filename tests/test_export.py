"""`jaxscale export`: runs, curves and fits of a planted store, identical through CSV and Parquet."""

import numpy as np
import pandas as pd
import pytest
from conftest import plant_run

from jaxscale.analysis.fit.results import FitResult
from jaxscale.cli.app import main
from jaxscale.config import ModelConfig, RunConfig, TrainConfig
from jaxscale.core import flops
from jaxscale.runs import selection, store

TABLES = ("runs", "curves", "fits")


@pytest.fixture(autouse=True)
def _no_compile_cache(monkeypatch):
    monkeypatch.setenv("JAXSCALE_NO_COMPILE_CACHE", "1")


def _cfg(width: int) -> RunConfig:
    return RunConfig(
        model=ModelConfig(d_model=width, n_layers=2, n_heads=2, d_ff=4 * width),
        train=TrainConfig(batch_size=8, steps=4, warmup_steps=0, eval_every=2),
    )


def _rows(cfg: RunConfig, width: int) -> list[dict]:
    rows = []
    for step in range(1, 5):
        row = {"step": step, "tokens": step * cfg.tokens_per_step, "loss": 5.0 - step / width}
        row.update(lr=1e-3, grad_norm=1.0, tokens_per_s=float("nan") if step == 1 else 900.0)
        if step % 2 == 0:
            row["eval_loss"] = 5.1 - step / width
        if step == 4:
            row["eval_loss_by_pos"] = [5.0, 4.5]
        rows.append(row)
    return rows


def _plant(results):
    """Two runs of a recorded study, one foreign run, and one saved fit."""
    cfgs = {w: _cfg(w) for w in (32, 48, 64)}
    for w, cfg in cfgs.items():
        summary = {"status": "done", "steps": 4, "tokens": 4 * cfg.tokens_per_step, "loss": 4.0}
        plant_run(results, cfg, _rows(cfg, w), summary)
    study = sorted(cfgs[w].run_id() for w in (32, 48))
    store.write_json_atomic(results / selection.RECORD, {"study": "s", "run_ids": study})
    rng = np.random.default_rng(0)
    fit = FitResult(
        form="chinchilla",
        method="nuts",
        samples={"E": rng.normal(1.7, 0.1, (2, 20)), "alpha": rng.normal(0.34, 0.02, (2, 20))},
        inputs={"N": np.array([1e6, 2e6, 4e6]), "D": np.array([1e8, 2e8, 4e8])},
        loss=np.array([3.0, 2.8, 2.6]),
        priors={},
        noise="lognormal",
        df=5.0,
    )
    fit.save(results / "report" / "fit", plots=False)
    return cfgs, study


def _read(out, table):
    return pd.read_csv(out / f"{table}.csv"), pd.read_parquet(out / f"{table}.parquet")


def test_export_round_trips_through_pandas(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "out"
    cfgs, study = _plant(results)
    assert main(["export", str(results), "--out", str(out)]) == 0
    assert "1 other run(s), left out" in capsys.readouterr().out
    frames = {}
    for table in TABLES:
        csv, parquet = _read(out, table)
        pd.testing.assert_frame_equal(csv, parquet, check_dtype=False)
        frames[table] = parquet
    runs, curves, fits = frames["runs"], frames["curves"], frames["fits"]
    assert sorted(runs["run_id"]) == study  # the recorded study's runs only
    for c in ("n_params", "n_params_nonembedding", "n_params_embedding"):
        assert c in runs
    by_id = {c.run_id(): (w, c) for w, c in cfgs.items()}
    for run_id in study:
        w, cfg = by_id[run_id]
        mine = curves[curves["run_id"] == run_id]
        rows = _rows(cfg, w)
        assert list(mine["step"]) == [r["step"] for r in rows]  # every curve row, once
        np.testing.assert_allclose(mine["loss"], [r["loss"] for r in rows])
        for conv in flops.CONVENTIONS:
            per_token = flops.flops_per_token(cfg.model, conv)
            np.testing.assert_allclose(mine[f"flops_{conv}"], per_token * mine["tokens"])
            row = runs[runs["run_id"] == run_id].iloc[0]
            assert row[f"flops_{conv}"] == pytest.approx(per_token * 4 * cfg.tokens_per_step)
        assert mine["eval_loss_by_pos"].dropna().tolist() == ["[5.0, 4.5]"]
    assert sorted(fits["parameter"]) == ["E", "alpha"]
    assert set(fits["fit"]) == {"report/fit"} and set(fits["form"]) == {"chinchilla"}
    assert main(["export", str(results), "--out", str(out), "--all-runs"]) == 0
    assert len(pd.read_parquet(out / "runs.parquet")) == 3


@pytest.mark.parametrize(
    "case",
    ["missing", "no runs", "bad format", "out is a file"],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case):
    results, out = tmp_path / "results", tmp_path / "out"
    if case != "missing":
        results.mkdir()
    if case in ("bad format", "out is a file"):
        plant_run(results, _cfg(32), _rows(_cfg(32), 32))
    argv = ["export", str(results), "--out", str(out)]
    if case == "bad format":
        argv += ["--format", "csv,xlsx"]
    if case == "out is a file":
        out.write_text("not a directory")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxscale: error: "), err
    if case == "out is a file":
        assert out.read_text() == "not a directory"
    else:
        assert not out.exists()
