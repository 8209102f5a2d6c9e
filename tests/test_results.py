"""Results loader: flattened run table, curves, compute columns, damage tolerance (~2 s)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from conftest import plant_run

from jaxscale.config import ModelConfig, RunConfig, TrainConfig
from jaxscale.core import flops
from jaxscale.runs import results


def _cfg(width: int, steps: int = 10, name: str = "r") -> RunConfig:
    return RunConfig(
        model=ModelConfig.from_width_depth(width, 2, head_dim=16, context_length=32),
        train=TrainConfig(batch_size=2, steps=steps, warmup_steps=0, eval_every=5),
        name=name,
    )


def _write_run(root, cfg: RunConfig, status: str = "done", rows=None) -> str:
    rows = rows or [
        {"step": s, "tokens": s * cfg.tokens_per_step, "loss": 5.0 / s, "lr": 1e-3}
        | ({"eval_loss": 4.0 / s} if s % 5 == 0 else {})
        for s in range(1, cfg.train.steps + 1)
    ]
    summary = {
        "status": status,
        "run_id": cfg.run_id(),
        "steps": cfg.train.steps,
        "tokens": cfg.total_tokens,
        "loss": rows[-1].get("eval_loss", np.nan),
        "train_loss": rows[-1]["loss"],
    }
    return plant_run(root, cfg, rows, summary if status else None).name


def test_load_tables_and_compute(tmp_path):
    a, b = _cfg(16, name="a"), _cfg(32, name="b")
    ra, rb = _write_run(tmp_path, a), _write_run(tmp_path, b, status="diverged")
    runs, curves = results.load(tmp_path)
    assert list(runs["run_id"]) == sorted([ra, rb])
    row = runs.set_index("run_id").loc[ra]
    assert row["name"] == "a" and row["status"] == "done"
    assert row["model.d_model"] == 16 and row["train.steps"] == 10
    assert row["n_params_nonembedding"] == a.model.n_params_nonembedding
    assert row["tokens"] == a.total_tokens and row["loss"] == pytest.approx(0.4)
    for conv in flops.CONVENTIONS:
        expect = flops.flops_per_token(a.model, conv) * a.total_tokens
        assert row[f"flops_{conv}"] == pytest.approx(expect)
    assert runs.set_index("run_id").loc[rb, "status"] == "diverged"
    c = results.compute(runs, "kaplan")
    assert c.loc[runs["run_id"] == ra].item() == pytest.approx(
        6 * a.model.n_params_nonembedding * a.total_tokens
    )
    assert len(curves) == 20 and set(curves["run_id"]) == {ra, rb}
    ca = curves[curves["run_id"] == ra]
    assert ca["eval_loss"].notna().sum() == 2
    np.testing.assert_allclose(
        results.compute(ca, "kaplan_attn"),
        flops.flops_per_token(a.model, "kaplan_attn") * ca["tokens"],
    )
    with pytest.raises(ValueError, match="unknown FLOP convention"):
        results.compute(runs, "kaplan_atn")


def test_corrupt_files_warn_with_run_and_line_and_never_crash(tmp_path):
    good = _cfg(16, name="good")
    rid = _write_run(tmp_path, good)
    with open(tmp_path / rid / "metrics.jsonl", "r+") as f:
        lines = f.readlines()
        lines[2] = lines[2][: len(lines[2]) // 2] + "\n"  # truncated mid-line
        lines.append('{"step": 11, "loss"')  # torn final write
        f.seek(0)
        f.writelines(lines)
        f.truncate()
    bad_summary = _cfg(32, name="bad-summary")
    rid2 = _write_run(tmp_path, bad_summary)
    (tmp_path / rid2 / "summary.json").write_text('{"status": "do')
    bad_cfg = tmp_path / "deadbeef0000"
    bad_cfg.mkdir()
    (bad_cfg / "config.json").write_text("{not json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs, curves = results.load(tmp_path)
    msgs = [str(w.message) for w in caught]
    assert any(rid in m and "metrics.jsonl:3" in m for m in msgs), msgs
    assert any(rid in m and "metrics.jsonl:11" in m for m in msgs), msgs
    assert any(rid2 in m and "summary.json" in m for m in msgs), msgs
    assert any("deadbeef0000" in m and "config.json" in m for m in msgs), msgs
    assert set(runs["run_id"]) == {rid, rid2}
    assert sorted(curves[curves["run_id"] == rid]["step"]) == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    r2 = runs.set_index("run_id").loc[rid2]
    # incomplete run: numbers come from its metrics
    assert r2["status"] == "incomplete" and r2["tokens"] == bad_summary.total_tokens
    assert r2["loss"] == pytest.approx(0.4)


def test_load_single_run_dir_and_missing(tmp_path):
    rid = _write_run(tmp_path, _cfg(16), status="")
    runs, curves = results.load(tmp_path / rid)
    assert list(runs["run_id"]) == [rid] and runs["status"].item() == "incomplete"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        results.load(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    r, c = results.load(empty)
    assert len(r) == 0 and len(c) == 0


def test_config_json_round_trips_through_from_dict(tmp_path):
    cfg = _cfg(32, name="rt")
    rid = _write_run(tmp_path, cfg)
    raw = json.loads((tmp_path / rid / "config.json").read_text())
    assert raw["run_id"] == rid
    raw.pop("run_id")
    assert RunConfig.from_dict(raw) == cfg
