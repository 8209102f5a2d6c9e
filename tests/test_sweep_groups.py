"""The runner trains compatible runs (LR grids, seed replicates) together in one vmapped step."""

import math

import pytest

from jaxscale.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.core import train
from jaxscale.runs import runner, store
from jaxscale.runs.rundir import RunDir


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
    decays = [_base().replace(**{"train.weight_decay": wd}) for wd in (0.0, 0.3)]
    longer = [_base().replace(**{"train.steps": 40})]
    groups = runner.plan(lrs + other + seeds + decays + longer)
    sizes = sorted(len(g) for g in groups)
    assert sizes == [1, 1, 7]  # lr, seed and λ variants share a step; shape or length don't
    many = [_base().replace(**{"train.lr": 1e-3 * (i + 1)}) for i in range(11)]
    assert [len(g) for g in runner.plan(many, max_group=8)] == [8, 3]
    with pytest.raises(ConfigError, match="setup_group: config 1 .* differs .* in train beyond"):
        train.setup_group(lrs[:1] + longer)  # refused before anything is compiled


def test_lr_grid_trained_as_one_group_matches_single_runs(tmp_path):
    runs = [_base().replace(**{"train.lr": lr}) for lr in (1e-3, 3e-3, 1e-2)]
    rep = runner.run_sweep(runs, tmp_path / "res", progress=False)
    assert rep.done == 3 and rep.failed == 0
    for cfg in runs:
        s = RunDir.of(tmp_path / "res", cfg).read_summary()
        assert s["status"] == "done" and s.get("group_size") == 3
    single = train.train(runs[1], RunDir(tmp_path / "single"), progress=False)
    grouped = RunDir.of(tmp_path / "res", runs[1]).read_summary()
    assert math.isclose(grouped["loss"], single["loss"], rel_tol=1e-4)
    rep2 = runner.run_sweep(runs, tmp_path / "res", progress=False)
    assert rep2.done == 3 and rep2.trained == []  # idempotent


def test_weight_decays_trained_as_one_group_each_match_their_single_run(tmp_path):
    """λ is data of the step, one per model: a group of λ 0, 0.3, 3 equals the runs trained
    alone (to float32 rounding), and λ visibly changes the loss, so no model used another's."""
    runs = [_base().replace(**{"train.weight_decay": wd, "train.lr": 1e-2}) for wd in (0, 0.3, 3)]
    rep = runner.run_sweep(runs, tmp_path / "res", progress=False)
    assert rep.done == 3
    alone = {}
    for cfg in (runs[0], runs[2]):
        grouped = RunDir.of(tmp_path / "res", cfg).read_summary()
        assert grouped["group_size"] == 3
        alone[cfg.train.weight_decay] = train.train(cfg, RunDir(tmp_path / "one"), progress=False)
        assert math.isclose(grouped["loss"], alone[cfg.train.weight_decay]["loss"], rel_tol=1e-4)
        (tmp_path / "one").rename(tmp_path / f"one-{cfg.train.weight_decay}")
    assert abs(alone[0]["loss"] - alone[3]["loss"]) > 1e-2


def test_group_failure_marks_runs_failed_and_sweep_continues(tmp_path, monkeypatch):
    def boom(cfgs, runs, progress=False, corpus=None):
        raise RuntimeError("device lost")

    monkeypatch.setattr(train, "train_group", boom)
    runs = [_base().replace(**{"train.lr": lr}) for lr in (1e-3, 3e-3)]
    solo = [_base().replace(**{"train.steps": 10})]
    rep = runner.run_sweep(runs + solo, tmp_path / "res", progress=False, log=lambda m: None)
    assert rep.failed == 2 and rep.done == 1
    s = RunDir.of(tmp_path / "res", runs[0]).read_summary()
    assert s["status"] == "failed" and "device lost" in s["error"]


def test_grouping_can_be_turned_off(tmp_path):
    runs = [_base().replace(**{"train.lr": lr, "train.steps": 10}) for lr in (1e-3, 3e-3)]
    rep = runner.run_sweep(runs, tmp_path / "res", progress=False, group=False)
    assert rep.done == 2
    s = RunDir.of(tmp_path / "res", runs[0]).read_summary()
    assert "group_size" not in s


def test_preemption_stops_one_by_one_training(tmp_path):
    calls = []

    def fake(cfg, run, progress=False):
        calls.append(cfg.run_id())
        s = {"status": "preempted", "run_id": cfg.run_id()}
        run.write_summary(s)
        return s

    runs = [_base().replace(**{"train.lr": lr}) for lr in (1e-3, 2e-3, 3e-3)]
    rep = runner.run_sweep(runs, tmp_path / "res", train_fn=fake, progress=False, log=lambda m: 0)
    assert rep.preempted and len(calls) == 1
    assert not list((tmp_path / "res").glob(f"*/{store.LOCK_NAME}"))  # every lock released


def test_resumed_group_run_keeps_its_losses(tmp_path):
    runs = [_base().replace(**{"train.lr": lr, "train.steps": 10}) for lr in (1e-3, 3e-3)]
    dirs = [RunDir.of(tmp_path, r) for r in runs]
    first = train.train_group(runs, dirs, progress=False)
    (dirs[0].path / "summary.json").unlink()  # as if killed before the summary was written
    again = train.train_group(runs, dirs, progress=False)
    for a, b in zip(first, again):
        assert (
            b["status"] == "done" and b["loss"] == a["loss"] and b["train_loss"] == a["train_loss"]
        )
