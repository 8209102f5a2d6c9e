"""The runner trains compatible runs (LR grids, seed replicates) together in one vmapped step."""

import math

from jaxscale.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.core import train
from jaxscale.runs import store, sweep


def _base(**train_kw):
    return RunConfig(
        model=ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, context_length=32),
        data=DataConfig(max_bytes=300_000),
        train=TrainConfig(batch_size=4, steps=20, warmup_steps=2, eval_every=10, **train_kw),
    )


def test_plan_groups_only_compatible_runs():
    lrs = [_base().replace(**{"train.lr": lr}) for lr in (1e-3, 3e-3, 1e-2)]
    seeds = [_base().replace(**{"train.seed": s}) for s in (1, 2)]
    other = [_base().replace(**{"model.d_model": 64, "model.d_ff": 128})]
    longer = [_base().replace(**{"train.steps": 40})]
    groups = sweep.plan(lrs + other + seeds + longer)
    sizes = sorted(len(g) for g in groups)
    assert sizes == [1, 1, 5]  # lr and seed variants share a step; shape or length changes don't
    many = [_base().replace(**{"train.lr": 1e-3 * (i + 1)}) for i in range(11)]
    assert [len(g) for g in sweep.plan(many, max_group=8)] == [8, 3]


def test_lr_grid_trained_as_one_group_matches_single_runs(tmp_path):
    runs = [_base().replace(**{"train.lr": lr}) for lr in (1e-3, 3e-3, 1e-2)]
    rep = sweep.run_sweep(runs, tmp_path / "res", progress=False)
    assert rep.done == 3 and rep.failed == 0
    for cfg in runs:
        s = store.read_json(tmp_path / "res" / cfg.run_id() / "summary.json")
        assert s["status"] == "done" and s.get("group_size") == 3
    single = train.train(runs[1], tmp_path / "single", progress=False)
    grouped = store.read_json(tmp_path / "res" / runs[1].run_id() / "summary.json")
    assert math.isclose(grouped["loss"], single["loss"], rel_tol=1e-4)
    rep2 = sweep.run_sweep(runs, tmp_path / "res", progress=False)
    assert rep2.done == 3 and rep2.trained == []  # idempotent


def test_group_failure_marks_runs_failed_and_sweep_continues(tmp_path, monkeypatch):
    from jaxscale.core import multi

    def boom(cfgs, dirs, progress=False):
        raise RuntimeError("device lost")

    monkeypatch.setattr(multi, "train_group", boom)
    runs = [_base().replace(**{"train.lr": lr}) for lr in (1e-3, 3e-3)]
    solo = [_base().replace(**{"train.steps": 10})]
    rep = sweep.run_sweep(runs + solo, tmp_path / "res", progress=False, log=lambda m: None)
    assert rep.failed == 2 and rep.done == 1
    s = store.read_json(tmp_path / "res" / runs[0].run_id() / "summary.json")
    assert s["status"] == "failed" and "device lost" in s["error"]


def test_grouping_can_be_turned_off(tmp_path):
    runs = [_base().replace(**{"train.lr": lr, "train.steps": 10}) for lr in (1e-3, 3e-3)]
    rep = sweep.run_sweep(runs, tmp_path / "res", progress=False, group=False)
    assert rep.done == 2
    s = store.read_json(tmp_path / "res" / runs[0].run_id() / "summary.json")
    assert "group_size" not in s


def test_preemption_stops_one_by_one_training(tmp_path):
    calls = []

    def fake(cfg, run_dir, progress=False):
        calls.append(cfg.run_id())
        s = {"status": "preempted", "run_id": cfg.run_id()}
        store.write_json_atomic(run_dir / "summary.json", s)
        return s

    runs = [_base().replace(**{"train.lr": lr}) for lr in (1e-3, 2e-3, 3e-3)]
    rep = sweep.run_sweep(runs, tmp_path / "res", train_fn=fake, progress=False, log=lambda m: 0)
    assert rep.preempted and len(calls) == 1
    assert not list((tmp_path / "res").glob(f"*/{store.LOCK_NAME}"))  # every lock released


def test_resumed_group_run_keeps_its_losses(tmp_path):
    from jaxscale.core import multi

    runs = [_base().replace(**{"train.lr": lr, "train.steps": 10}) for lr in (1e-3, 3e-3)]
    dirs = [tmp_path / r.run_id() for r in runs]
    first = multi.train_group(runs, dirs, progress=False)
    (dirs[0] / "summary.json").unlink()
    again = multi.train_group(runs, dirs, progress=False)
    for a, b in zip(first, again):
        assert (
            b["status"] == "done" and b["loss"] == a["loss"] and b["train_loss"] == a["train_loss"]
        )
