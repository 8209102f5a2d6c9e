"""Study grids, study loading, task slicing, per-run locks and the runner's bookkeeping (~25 s).

Runner tests inject a fake `train` (writes metrics/summary like train.train, "checkpoints" its
step so a restart resumes) and run it in subprocesses to SIGKILL them or race two of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jaxscale.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.core import flops
from jaxscale.runs import grids, runner, store, study
from jaxscale.runs.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
BASE = RunConfig(
    model=ModelConfig(context_length=64, vocab_size=257),
    train=TrainConfig(batch_size=4, warmup_steps=5, steps=40),
)
SHAPES = [(16, 1), (32, 1), (32, 2), (64, 2)]


# --- generators -------------------------------------------------------------------------------


@pytest.mark.parametrize("convention", ["kaplan_attn", "chinchilla", "exact"])
def test_isoflop_runs_spend_their_budget(convention):
    budgets = [1e9, 3e9, 1e10]
    plan = grids.isoflop_plan(BASE, budgets, SHAPES, convention=convention, min_steps=20)
    assert {p.budget for p in plan} == set(budgets)
    for p in plan:
        cfg = p.cfg
        spent = flops.flops_per_token(cfg.model, convention) * cfg.train.steps * 4 * 64
        assert spent == pytest.approx(p.flops)
        # rounding to whole steps moves at most half a step: |err| <= 0.5 / exact_steps
        assert abs(spent / p.budget - 1) <= 0.5 / (cfg.train.steps - 0.5)
        assert abs(p.rel_error) < 0.03
        assert cfg.train.steps >= 20
        assert grids.budget_tag(p.budget) in cfg.name
        assert cfg.train.warmup_steps <= cfg.train.steps
    # a bigger budget trains every size on more tokens
    by = {(p.cfg.model.d_model, p.cfg.model.n_layers, p.budget): p.cfg.total_tokens for p in plan}
    assert by[(16, 1, 1e10)] > by[(16, 1, 3e9)] > by[(16, 1, 1e9)]


def test_isoflop_drops_models_too_big_for_a_budget():
    plan = grids.isoflop_plan(BASE, [1e9], SHAPES, min_steps=20)
    sizes = {p.cfg.model.d_model * 10 + p.cfg.model.n_layers for p in plan}
    assert 642 not in sizes and 161 in sizes  # (64, 2) needs more than 1e9 for 20 steps


def test_budget_too_small_names_budget_and_smallest_cost():
    small = BASE.model.resized(16, 1)
    cost = flops.flops_per_token(small, "kaplan_attn") * 20 * 4 * 64
    with pytest.raises(ConfigError) as e:
        grids.isoflop_plan(BASE, [1e6, 1e9], SHAPES, min_steps=20)
    msg = str(e.value)
    assert "1.000e+06" in msg and f"{cost:.3e}" in msg and "smallest model" in msg


def test_run_ids_stable_and_unique():
    a = grids.isoflop_runs(BASE, [1e9, 3e9], SHAPES)
    b = grids.isoflop_runs(BASE, [1e9, 3e9], SHAPES)
    assert [r.run_id() for r in a] == [r.run_id() for r in b]
    assert len({r.run_id() for r in a}) == len(a)


def test_batch_lr_nd_grids():
    batches = grids.batch_grid_runs(BASE, [2, 4, 8], tokens=2**16)
    assert [r.train.batch_size for r in batches] == [2, 4, 8]
    assert all(r.total_tokens == 2**16 for r in batches)

    lrs = grids.lr_grid_runs(BASE, [(16, 1), (32, 2)], [1e-3, 3e-3, 1e-2])
    assert len(lrs) == 6 and {r.train.lr for r in lrs} == {1e-3, 3e-3, 1e-2}

    nd = grids.nd_grid_runs(BASE, [(16, 1), (32, 2)], [2**14, 2**16])
    assert sorted({r.total_tokens for r in nd}) == [2**14, 2**16] and len(nd) == 4


def test_task_slices_partition_the_sweep():
    runs = grids.isoflop_runs(BASE, [1e9, 3e9, 1e10], SHAPES)
    groups = runner.plan(runs)
    slices = [runner.task_slice(groups, i, 3) for i in range(3)]
    ids = [r.run_id() for s in slices for g in s for r in g]
    assert sorted(ids) == sorted(r.run_id() for r in runs)  # every run exactly once
    assert slices == [runner.task_slice(groups, i, 3) for i in range(3)]  # deterministic
    loads = [sum(grids.planned_flops(r) for g in s for r in g) for s in slices]
    assert max(loads) < 0.6 * sum(loads)  # LPT spreads the cost
    with pytest.raises(ConfigError, match="task-index"):
        runner.task_slice(groups, 3, 3)


def test_study_loading(tmp_path):
    st = study.load_study(ROOT / "experiments" / "quickstart.py")
    assert st.name == "quickstart" and "tiny" in st.settings
    tiny = st.runs("tiny")
    assert 4 <= len(tiny) <= 8 and all(r.model.context_length == 64 for r in tiny)
    with pytest.raises(ConfigError, match="no setting 'huge'"):
        st.runs("huge")
    bad = tmp_path / "bad.py"
    bad.write_text("X = 1\n")
    with pytest.raises(ConfigError, match="must define"):
        study.load_study(bad)
    with pytest.raises(ConfigError, match="not found"):
        study.load_study(tmp_path / "missing.py")


# --- locks ------------------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(run_dir: Path, **info) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / store.LOCK_NAME).write_text(json.dumps({"token": "old", **info}))
    hb = info["heartbeat"]
    os.utime(run_dir / store.LOCK_NAME, (hb, hb))  # the file's mtime is the live heartbeat


def test_lock_exclusive_and_released(tmp_path):
    a = store.RunLock.acquire(tmp_path / "r")
    assert a is not None
    assert store.RunLock.acquire(tmp_path / "r") is None  # held by a live worker (us)
    a.release()
    b = store.RunLock.acquire(tmp_path / "r")
    assert b is not None
    b.release()
    assert not (tmp_path / "r" / store.LOCK_NAME).exists()


def test_stale_lock_of_dead_pid_is_recovered(tmp_path):
    host = socket.gethostname()
    _write_lock(tmp_path / "r", pid=_dead_pid(), host=host, heartbeat=time.time())
    with pytest.warns(UserWarning, match="recovering stale lock"):
        lock = store.RunLock.acquire(tmp_path / "r", timeout=3600)
    assert lock is not None and store.lock_info(tmp_path / "r")["token"] == lock.token
    lock.release()


def test_stale_heartbeat_from_other_host_is_recovered(tmp_path):
    _write_lock(tmp_path / "old", pid=1, host="elsewhere", heartbeat=time.time() - 1000)
    _write_lock(tmp_path / "fresh", pid=1, host="elsewhere", heartbeat=time.time())
    with pytest.warns(UserWarning, match="recovering stale lock"):
        old = store.RunLock.acquire(tmp_path / "old", timeout=300)
    assert old is not None
    old.release()
    assert store.RunLock.acquire(tmp_path / "fresh", timeout=300) is None


def test_heartbeat_refreshes_and_notices_takeover(tmp_path):
    lock = store.RunLock.acquire(tmp_path / "r", heartbeat_s=0.05)
    t0 = store.lock_info(tmp_path / "r")["heartbeat"]
    time.sleep(0.3)
    assert store.lock_info(tmp_path / "r")["heartbeat"] > t0
    _write_lock(tmp_path / "r", pid=1, host="other", heartbeat=time.time())
    time.sleep(0.2)
    assert lock.lost
    lock.release()  # must not delete the other worker's lock
    assert store.lock_info(tmp_path / "r")["host"] == "other"


# --- runner with a fake train -----------------------------------------------------------------

FAKE = textwrap.dedent(
    """
    import json, math, os, sys, time
    from pathlib import Path
    from jaxscale.runs import grids, runner, store
    from jaxscale.config import ModelConfig, RunConfig, TrainConfig

    def runs():
        base = RunConfig(model=ModelConfig(d_model=16, n_layers=1, n_heads=1, d_ff=64,
                         context_length=16), train=TrainConfig(batch_size=2, steps=STEPS,
                         warmup_steps=0, eval_every=2))
        return grids.lr_grid_runs(base, [(16, 1), (32, 1)], [1e-3, 2e-3, 3e-3, 4e-3])

    def fake_train(cfg, run, progress=False):
        ck = run.checkpoint_dir / "step"
        start = int(ck.read_text()) if ck.exists() else 0
        run.truncate_metrics(start)
        with open(LOG, "a") as f:
            f.write(f"start {cfg.run_id()} {os.getpid()} {start}\\n")
        if "boom" in cfg.name:
            raise RuntimeError("planted failure")
        for s in range(start + 1, cfg.train.steps + 1):
            time.sleep(SLEEP)
            loss = math.nan if "nan" in cfg.name and s == 2 else 3.0 / s
            run.append_metrics([{"step": s, "loss": loss, "tokens": s * cfg.tokens_per_step,
                                 "lr": cfg.train.lr}])
            if not math.isfinite(loss):
                status = "diverged"
                break
            ck.parent.mkdir(exist_ok=True)
            store.write_json_atomic(ck, s)  # atomic, like an orbax checkpoint
        else:
            status = "done"
        summary = {"status": status, "run_id": cfg.run_id(), "steps": s,
                   "tokens": s * cfg.tokens_per_step, "loss": 3.0 / s}
        run.write_summary(summary)
        with open(LOG, "a") as f:
            f.write(f"{status} {cfg.run_id()} {os.getpid()} {s}\\n")
        return summary

    if __name__ == "__main__":
        go = Path(sys.argv[1]) / "GO"
        while not go.exists():
            time.sleep(0.01)
        rep = runner.run_sweep(runs(), sys.argv[1], train_fn=fake_train, progress=False,
                               heartbeat_s=0.1, lock_timeout=30)
        sys.exit(rep.exit_code)
    """
)


def _fake_module(tmp_path: Path, steps: int, sleep: float) -> Path:
    src = FAKE.replace("STEPS", str(steps)).replace("SLEEP", str(sleep))
    src = src.replace("LOG", repr(str(tmp_path / "log.txt")))
    path = tmp_path / "fake_runner.py"
    path.write_text(src)
    return path


def _start(script: Path, results: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), str(results)], env=env)


def _log(tmp_path: Path) -> list[list[str]]:
    p = tmp_path / "log.txt"
    return [line.split() for line in p.read_text().splitlines()] if p.exists() else []


def _load_fake(tmp_path: Path, steps: int = 4, sleep: float = 0.0):
    import importlib.util

    path = _fake_module(tmp_path, steps, sleep)
    spec = importlib.util.spec_from_file_location("fake_runner_mod", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_runner_bookkeeping_failed_diverged_and_skip(tmp_path):
    mod = _load_fake(tmp_path)
    runs = mod.runs()
    runs[1] = dataclasses.replace(runs[1], name="boom-run")
    runs[2] = dataclasses.replace(runs[2], name="nan-run")
    res = tmp_path / "res"
    rep = runner.run_sweep(runs, res, train_fn=mod.fake_train, progress=False)
    assert (rep.done, rep.failed, rep.diverged) == (len(runs) - 2, 1, 1)
    assert rep.exit_code == 1
    failed = RunDir.of(res, runs[1]).read_summary()
    assert failed["status"] == "failed" and "planted failure" in failed["error"]
    assert "RuntimeError" in (RunDir.of(res, runs[1]).path / "error.txt").read_text()
    assert RunDir.of(res, runs[2]).status == "diverged"
    assert RunDir.of(res, runs[0]).read_config_raw()["run_id"]
    n_started = len(_log(tmp_path))
    # a rerun trains nothing: done, diverged and failed runs are all final
    rep2 = runner.run_sweep(runs, res, train_fn=mod.fake_train, progress=False)
    assert rep2.trained == [] and len(_log(tmp_path)) == n_started
    assert rep2.flops_spent == pytest.approx(rep.flops_spent)
    # --retry-failed reruns only the failed one
    rep3 = runner.run_sweep(runs, res, train_fn=mod.fake_train, progress=False, retry_failed=True)
    assert rep3.trained == [runs[1].run_id()]
    rows = runner.status_table(runs, res)
    assert sorted(r["state"] for r in rows).count("done") == len(runs) - 2


def _wait_for(pred, timeout: float = 60.0) -> None:
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise TimeoutError
        time.sleep(0.02)


def test_sigkill_and_restart_loses_and_duplicates_nothing(tmp_path):
    """Runner SIGKILLed mid-run twice: the third start completes, nothing lost or doubled."""
    script = _fake_module(tmp_path, steps=6, sleep=0.1)
    res = tmp_path / "res"
    res.mkdir()
    (res / "GO").touch()
    killed = []
    for starts_wanted in (3, 5):
        p = _start(script, res)
        # kill inside a run, after it has checkpointed a step or two
        _wait_for(lambda n=starts_wanted: sum(r[0] == "start" for r in _log(tmp_path)) >= n)
        time.sleep(0.35)
        p.send_signal(signal.SIGKILL)
        p.wait()
        before = _log(tmp_path)
        killed.append([r[1] for r in before if r[0] == "start"][-1])
        assert killed[-1] not in {r[1] for r in before if r[0] == "done"}
    p3 = _start(script, res)
    assert p3.wait(timeout=120) == 0
    log = _log(tmp_path)
    spec = importlib_runs(script)
    done = [r[1] for r in log if r[0] == "done"]
    assert sorted(done) == sorted(spec)  # no lost run, no run finished twice
    for k in killed:
        resumed = [r for r in log if r[0] == "start" and r[1] == k and int(r[3]) > 0]
        assert resumed  # resumed from its checkpoint, not restarted from scratch
        steps = [r["step"] for r in RunDir(res / k).read_metrics()]
        assert steps == list(range(1, 7))


def importlib_runs(script: Path) -> list[str]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import runpy; m = runpy.run_path({str(script)!r}); "
            "print(' '.join(r.run_id() for r in m['runs']()))",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def test_two_runners_split_the_work_without_collision(tmp_path):
    script = _fake_module(tmp_path, steps=4, sleep=0.08)
    res = tmp_path / "res"
    res.mkdir()
    procs = [_start(script, res) for _ in range(2)]
    time.sleep(0.5)  # both imported and waiting at the start line
    (res / "GO").touch()
    # The worker that finishes first may still see a run held by the other: exit 4 (rerun
    # later); the last one sees the whole share finished.
    assert sorted(p.wait(timeout=120) for p in procs) in ([0, 0], [0, 4])
    log = _log(tmp_path)
    starts = [r[1] for r in log if r[0] == "start"]
    spec = importlib_runs(script)
    assert sorted(starts) == sorted(spec)  # every run started exactly once
    assert sorted(r[1] for r in log if r[0] == "done") == sorted(spec)
    assert len({r[2] for r in log if r[0] == "start"}) == 2  # both workers trained runs
    assert not list(res.glob("*/" + store.LOCK_NAME))


def test_one_real_tiny_run(tmp_path):
    """The real train.train through the runner: summary, metrics and rerun-skip (~10 s)."""
    small = dataclasses.replace(
        BASE,
        model=BASE.model.resized(16, 1, head_dim=16),
        data=DataConfig(max_bytes=400_000),
        train=dataclasses.replace(BASE.train, eval_batches=1),
    )
    cfg = dataclasses.replace(grids.with_steps(small, 12, evals=2), name="real-tiny")
    rep = runner.run_sweep([cfg], tmp_path, progress=False)
    assert rep.done == 1 and rep.trained == [cfg.run_id()]
    summary = RunDir.of(tmp_path, cfg).read_summary()
    assert summary["status"] == "done" and summary["steps"] == 12
    assert rep.flops_spent == pytest.approx(grids.planned_flops(cfg))
    assert len(RunDir.of(tmp_path, cfg).read_metrics()) == 12
    assert runner.run_sweep([cfg], tmp_path, progress=False).trained == []


def test_model_for_keeps_base_fields():
    base = ModelConfig(context_length=96, activation="swiglu", norm="layernorm", vocab_size=300)
    m = base.resized(128, 3, head_dim=32)
    assert (m.d_model, m.n_layers, m.n_heads) == (128, 3, 4)
    kept = (m.context_length, m.activation, m.norm, m.vocab_size)
    assert kept == (96, "swiglu", "layernorm", 300)
    assert m.d_ff == ModelConfig.from_width_depth(128, 3, head_dim=32, activation="swiglu").d_ff
