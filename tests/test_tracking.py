"""Tracking: TensorBoard mirrors metrics.jsonl (also across a resume), W&B on request only."""

import errno
import math
import shlex
import sys
import types

import numpy as np
import pytest
from conftest import plant_run
from tensorboard.backend.event_processing import event_accumulator

from jaxscale.cli.app import main, summary_paragraph
from jaxscale.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.core import checkpoint, data, tracking, train
from jaxscale.runs.rundir import RunDir

DATA = DataConfig(max_bytes=2_000_000)


def _cfg(steps: int, seed: int = 0) -> RunConfig:
    return RunConfig(
        model=ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, context_length=32),
        data=DATA,
        train=TrainConfig(
            batch_size=8,
            steps=steps,
            warmup_steps=2,
            lr=1e-2,
            seed=seed,
            eval_every=10,
            checkpoint_every=10,
            log_every=2,
        ),
    )


@pytest.fixture(scope="module")
def corpus():
    return data.load_corpus(DATA)


def _scalars(run: RunDir, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a tag as TensorBoard shows it (purged events hidden)."""
    acc = event_accumulator.EventAccumulator(
        str(run.tensorboard_dir), size_guidance={event_accumulator.SCALARS: 0}
    )
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _assert_mirrors(run: RunDir) -> None:
    rows = run.read_metrics()
    loss = _scalars(run, "train/loss")
    assert [s for s, _ in loss] == [r["step"] for r in rows]  # every step once, in order
    np.testing.assert_allclose([v for _, v in loss], [r["loss"] for r in rows], rtol=1e-6)
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    got = _scalars(run, "eval/loss")
    assert [s for s, _ in got] == [s for s, _ in evals]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in evals], rtol=1e-6)
    lrs = _scalars(run, "train/lr")
    np.testing.assert_allclose([v for _, v in lrs], [r["lr"] for r in rows], rtol=1e-6)
    tps = dict(_scalars(run, "perf/tokens_per_s"))
    assert tps and all(
        math.isclose(tps[r["step"]], r["tokens_per_s"], rel_tol=1e-6)
        for r in rows
        if math.isfinite(r["tokens_per_s"])
    )


def test_tensorboard_mirrors_metrics_across_a_resume(tmp_path, monkeypatch, corpus):
    cfg = _cfg(steps=30)
    run = RunDir(tmp_path / "r")
    log = tracking.TensorBoardHook.log

    def crash_at_25(self, step, row):
        log(self, step, row)
        if step == 25:
            raise RuntimeError("simulated crash")

    # Session 1 dies at step 25 after logging 21..25; its last checkpoint is step 20.
    monkeypatch.setattr(tracking.TensorBoardHook, "log", crash_at_25)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.train(cfg, run, progress=False, corpus=corpus)
    monkeypatch.undo()
    assert max(r["step"] for r in run.read_metrics()) == 20
    s = train.train(cfg, run, progress=False, corpus=corpus)
    assert s["status"] == "done" and s["steps"] == 30
    files = sorted(run.tensorboard_dir.iterdir())
    assert len(files) == 2, files  # one event file per session
    _assert_mirrors(run)


def test_full_disk_under_the_event_file_stops_training_with_disk_full(
    tmp_path, monkeypatch, corpus
):
    """A failed event write raises in the loop (DiskFull naming the run), never a dead writer
    thread with the loop blocked behind it."""
    write, n = tracking.EventsWriter.write_event, []

    def fill_up(self, event):
        n.append(1)
        if len(n) > 4:  # a few steps in (one event per metrics row)
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, event)

    monkeypatch.setattr(tracking.EventsWriter, "write_event", fill_up)
    run = RunDir(tmp_path / "full")
    with pytest.raises(checkpoint.DiskFull, match="disk full .* TensorBoard"):
        train.train(_cfg(steps=10), run, progress=False, corpus=corpus)
    assert run.read_summary()["status"] == "failed"


def _fake_wandb(calls: list) -> types.ModuleType:
    """A stand-in `wandb` module recording init/log/finish per run (wandb is not installed)."""

    class Run:
        def __init__(self, run_id):
            self.id = run_id

        def log(self, scalars, step):
            calls.append((self.id, "log", step, scalars))

        def finish(self):
            calls.append((self.id, "finish"))

    def init(**kw):
        calls.append((kw["id"], "init", kw))
        return Run(kw["id"])

    mod = types.ModuleType("wandb")
    mod.init = init
    return mod


def test_group_runs_get_their_own_event_dir_and_wandb_run(tmp_path, monkeypatch, corpus):
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    cfgs = [_cfg(steps=10, seed=0), _cfg(steps=10, seed=1)]
    runs = [RunDir(tmp_path / "a"), RunDir(tmp_path / "b")]
    t = tracking.Tracking(wandb_project="scaling")
    train.train_group(cfgs, runs, progress=False, corpus=corpus, tracking=t)
    for cfg, run in zip(cfgs, runs):
        _assert_mirrors(run)
        (_, kind, kw), *logs, last = [c for c in calls if c[0] == cfg.run_id()]
        assert kind == "init" and last[1:] == ("finish",)
        assert kw["project"] == "scaling" and kw["id"] == run.read_config_raw()["run_id"]
        assert kw["config"]["train"]["seed"] == cfg.train.seed
        assert kw["config"]["manifest"] == run.sessions()[-1]
        rows = run.read_metrics()
        train_logs = [(step, d) for _, _, step, d in logs if "train/loss" in d]
        assert [s for s, _ in train_logs] == [r["step"] for r in rows]
        assert [d["train/loss"] for _, d in train_logs] == [r["loss"] for r in rows]
        assert [(s, d["eval/loss"]) for _, _, s, d in logs if "eval/loss" in d] == [
            (r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r
        ]
    assert _scalars(runs[0], "train/loss") != _scalars(runs[1], "train/loss")


def test_train_refuses_wandb_when_missing_before_writing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    monkeypatch.setenv("JAXSCALE_NO_COMPILE_CACHE", "1")
    out = tmp_path / "never"
    code = main(["train", "--no-progress", "--run-dir", str(out), "--wandb", "p"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["jaxscale: error: wandb is not installed: pip install wandb"]
    assert not out.exists()


def test_progress_bar_shows_last_eval_and_smoothed_throughput():
    def mfu(t):
        return t / 1e6

    before = train._bar_postfix(3.21, math.nan, [], mfu)
    assert before == {"loss": "3.210"}  # no eval yet, no throughput yet: nothing shown
    spiky = [1000.0] * 10 + [50.0]  # one slow interval (a checkpoint) does not move the median
    after = train._bar_postfix(3.0, 2.5, spiky, mfu)
    assert after == {"loss": "3.000", "eval": "2.500", "tok/s": "1,000", "mfu": "0.1%"}


# --- output a person can read -----------------------------------------------------------------


def test_run_summary_names_the_run_once():
    s = {
        "name": "run",  # the default name
        "run_id": "abc123",
        "status": "done",
        "steps": 10,
        "tokens": 1000,
        "loss": 2.0,
        "train_loss": 2.1,
        "tokens_per_s": 100.0,
        "mfu": 0.1,
        "wall_time_s": 3.0,
    }
    assert summary_paragraph(s, "runs/abc123").startswith("Run abc123 done after 10 steps")
    s["name"] = "w64"
    assert summary_paragraph(s, "runs/abc123").startswith("Run abc123 (w64) done after")


def test_frontier_hint_is_a_fit_command_that_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXSCALE_NO_COMPILE_CACHE", "1")
    results = tmp_path / "res"
    for budget in (1e12, 1e13):  # two budgets: Approach 2 refuses an exponent
        for width in (32, 48, 64, 96):
            m = ModelConfig(d_model=width, n_layers=2, n_heads=2, d_ff=4 * width)
            tps = 8 * m.context_length
            steps = max(1, round(budget / (6 * m.n_params_nonembedding * tps)))
            cfg = RunConfig(model=m, train=TrainConfig(batch_size=8, steps=steps, warmup_steps=0))
            n, d = m.n_params_nonembedding, steps * tps
            loss = 1.7 + 400 / n**0.34 + 400 / d**0.28
            summary = {"status": "done", "loss": loss, "tokens": d, "steps": steps}
            plant_run(
                results,
                cfg,
                [{"step": steps, "tokens": d, "loss": loss, "eval_loss": loss}],
                summary,
            )
    assert main(["frontier", str(results), "--out", str(tmp_path / "fr")]) == 0
    out = capsys.readouterr().out
    assert "no exponent" in out
    (hint,) = [line for line in out.splitlines() if line.startswith("hint: ")]
    argv = shlex.split(hint[hint.index("jaxscale fit ") :])
    assert argv[:2] == ["jaxscale", "fit"]
    # The hinted command as given; only the sampler is made cheap for the test.
    code = main(argv[1:] + ["--method", "map"])
    assert code in (0, 1), capsys.readouterr().err  # 1: diagnostics flagged, still an answer
    assert "N_opt" in capsys.readouterr().out
