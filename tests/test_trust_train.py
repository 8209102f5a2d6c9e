"""Runs you can trust (issue 15), the training side: run identity and locks wired into training,
checkpoints that keep good state, all training state in the checkpoint, and hostile
infrastructure (full disks, SIGTERM at start-up, batches that cannot fit) as one line each."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale.cli import app
from jaxscale.config import ConfigError, TrainConfig
from jaxscale.core import checkpoint, data, memory, train
from jaxscale.runs import store
from jaxscale.runs.rundir import RunDir, RunMismatch

sys.path.insert(0, str(Path(__file__).parent))
from test_train import _cfg, _cli, _overrides, _wait_for_checkpoint  # noqa: E402

# Wall-clock columns differ between any two runs; every other column must not.
WALL_CLOCK = ("tokens_per_s", "mfu", "time")


def _columns(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


def _snapshot(d: Path) -> dict[str, bytes]:
    """Every file under d (checkpoints included) by relative path: what 'untouched' means."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _one_line(err: str) -> str:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-3000:]
    return err.strip()


def _steps(ckpt_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())


def _sigterm_after_checkpoint(mp: pytest.MonkeyPatch, step: int) -> None:
    """A preemption: SIGTERM to this process right after checkpoint `step` is started."""
    real = checkpoint.save

    def save(mngr, s, state, host=None):
        real(mngr, s, state, host)
        if s == step:
            os.kill(os.getpid(), signal.SIGTERM)

    mp.setattr(checkpoint, "save", save)


def _steal_lock_after_checkpoint(mp: pytest.MonkeyPatch, run_dir: Path, step: int) -> None:
    """After checkpoint `step`, another worker takes the run's lock over (a lapsed heartbeat)."""
    real = checkpoint.save

    def save(mngr, s, state, host=None):
        real(mngr, s, state, host)
        if s == step:
            (run_dir / store.LOCK_NAME).write_text(
                json.dumps({"token": "theirs", "pid": 1, "host": "other", "heartbeat": time.time()})
            )

    mp.setattr(checkpoint, "save", save)


def _main(argv: list[str], monkeypatch) -> int:
    monkeypatch.setenv("JAXSCALE_NO_COMPILE_CACHE", "1")  # leave this process's JAX config alone
    return app.main(argv)


# --- 1. run identity and the lock, wired into training ----------------------------------------


def test_cli_refuses_a_run_dir_holding_another_config_and_touches_nothing(tmp_path):
    old = _cfg(steps=20)
    run = tmp_path / "run"
    train.train(old, RunDir(run), progress=False)
    before = _snapshot(run)
    assert all(any(p.startswith(f"checkpoints/{k}/") for p in before) for k in (10, 20))
    proc = _cli(old.replace(**{"model.d_model": 64}), run)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    line = _one_line(err.decode())
    assert line.startswith("jaxscale: error:") and "model.d_model 32 → 64" in line
    assert "--replace" in line
    assert _snapshot(run) == before  # both checkpoints, metrics, summary, config: as they were


def test_preempted_run_rerun_with_another_lr_is_refused(tmp_path, monkeypatch):
    cfg = _cfg(steps=30)
    run = RunDir(tmp_path / "run")
    with monkeypatch.context() as mp:
        _sigterm_after_checkpoint(mp, 10)
        s = train.train(cfg, run, progress=False)
    assert s["status"] == "preempted" and s["steps"] == 10
    before = _snapshot(run.path)
    with pytest.raises(RunMismatch, match=r"train\.lr 0\.01 → 0\.03"):
        train.train(cfg.replace(**{"train.lr": 3e-2}), run, progress=False)
    assert _snapshot(run.path) == before


def test_resume_refuses_a_corpus_rewritten_in_place(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    text = Path(os.__file__).read_text() * 3
    corpus.write_text(text)
    cfg = _cfg(steps=30).replace(**{"data.corpus": str(corpus), "data.max_bytes": None})
    run = RunDir(tmp_path / "run")
    with monkeypatch.context() as mp:
        _sigterm_after_checkpoint(mp, 10)
        assert train.train(cfg, run, progress=False)["status"] == "preempted"
    before = _snapshot(run.path)
    corpus.write_text(text.replace("import", "imports", 1))  # same name, size nearly, new bytes
    with pytest.raises(RunMismatch, match="data fingerprint"):
        train.train(cfg, run, progress=False)
    assert _snapshot(run.path) == before


def test_second_train_on_a_run_dir_in_use_refuses(tmp_path):
    cfg = _cfg(steps=100_000)
    run = tmp_path / "run"
    first = _cli(cfg, run)
    try:
        _wait_for_checkpoint(run, 10, first)
        second = _cli(cfg, run)
        _, err = second.communicate(timeout=300)
    finally:
        first.send_signal(signal.SIGTERM)
        _, err_first = first.communicate(timeout=120)
    assert second.returncode == 2
    line = _one_line(err.decode())
    assert "being trained by another live worker" in line and str(first.pid) in line
    assert first.returncode == 0, err_first.decode()[-2000:]
    steps = [r["step"] for r in store.read_jsonl(run / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1))  # no step twice
    sessions = json.loads((run / "manifest.json").read_text())["sessions"]
    assert len(sessions) == 1  # the second worker wrote nothing


def test_replace_moves_the_old_run_aside_then_trains(tmp_path, monkeypatch, capsys):
    old = _cfg(steps=10)
    run = tmp_path / "run"
    train.train(old, RunDir(run), progress=False)
    before = _snapshot(run)
    new = old.replace(**{"model.d_model": 64})
    argv = ["train", "--no-progress", "--replace", "--run-dir", str(run), *_overrides(new)]
    assert _main(argv, monkeypatch) == 0
    out = capsys.readouterr().out
    (aside,) = tmp_path.glob("run.replaced-*")
    assert f"moved the old run aside to {aside}" in out
    assert _snapshot(aside) == before
    assert RunDir(run).read_config() == new and RunDir(run).status == "done"


# --- 2. a worker that loses its lock ----------------------------------------------------------


def test_worker_that_loses_its_lock_stops_writing(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    lock = run.lock()
    _steal_lock_after_checkpoint(monkeypatch, run.path, 10)
    try:
        with pytest.raises(store.LockLost, match="took this run's lock over"):
            train.train(_cfg(steps=30), run, progress=False)
    finally:
        lock.release()
    assert _steps(run.checkpoint_dir) == [10]
    assert max(r["step"] for r in run.read_metrics()) == 10
    assert not run.has_summary_file()


def test_cli_lock_lost_is_one_line_and_exit_4(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _steal_lock_after_checkpoint(monkeypatch, run, 10)
    argv = ["train", "--no-progress", "--run-dir", str(run), *_overrides(_cfg(steps=30))]
    assert _main(argv, monkeypatch) == 4
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("jaxscale: error:") and "took this run's lock over" in line
    assert _steps(run / "checkpoints") == [10] and not (run / "summary.json").exists()


def test_train_help_documents_the_exit_codes(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        _main(["train", "--help"], monkeypatch)
    section = capsys.readouterr().out.split("exit codes:")[1].split("config keys")[0]
    codes = {e.split()[0]: " ".join(e.split()) for e in re.split(r"\n  (?=\d)", section)[1:]}
    assert set(codes) == {"0", "2", "3", "4", "130"}
    for code, what in (("0", "preempted"), ("2", "full disk"), ("3", "diverged"), ("4", "lock")):
        assert what in codes[code], codes[code]


# --- 3. checkpoint restore never destroys good state ------------------------------------------

HOST = {"gns": {"g2": 0.1234567891234, "tr_sigma": 2.5, "weight": 0.95}}


def _state(x: float) -> dict:
    return {"params": {"w": jnp.full((4, 8), x)}, "step": jnp.asarray(int(x), jnp.int32)}


def _abstract(shape=(4, 8)) -> dict:
    return {
        "params": {"w": jax.ShapeDtypeStruct(shape, jnp.float32)},
        "step": jax.ShapeDtypeStruct((), jnp.int32),
    }


def _two_checkpoints(tmp_path: Path) -> Path:
    """checkpoints/10 and /20 of a tiny state under tmp_path/run; returns the checkpoint dir."""
    d = tmp_path / "run" / "checkpoints"
    m = checkpoint.manager(d, TrainConfig(keep_checkpoints=3))
    checkpoint.save(m, 10, _state(10.0), HOST)
    checkpoint.save(m, 20, _state(20.0), HOST)
    checkpoint.close(m)
    return d


def _flaky(mngr, fails: dict[int, int]) -> None:
    """mngr.restore raises OSError(EIO) fails[step] times for each step, then reads."""
    real = mngr.restore

    def restore(step, *args, **kw):
        if fails.get(step, 0) > 0:
            fails[step] -= 1
            raise OSError(errno.EIO, "Input/output error")
        return real(step, *args, **kw)

    mngr.restore = restore


def _garble(step_dir: Path) -> None:
    for p in step_dir.rglob("*"):
        if p.is_file():
            p.write_bytes(b"\x00garbage")


def test_transient_eio_on_restore_is_retried_and_moves_nothing(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    cfg = _cfg(steps=20)
    ref = train.train(cfg, RunDir(tmp_path / "ref"), progress=False)
    run = RunDir(tmp_path / "run")
    train.train(cfg, run, progress=False)
    (run.path / "summary.json").unlink()
    monkeypatch.setattr(checkpoint, "BACKOFF_S", 0.01)
    real, fails = ocp.CheckpointManager.restore, {"n": 2}

    def restore(self, step, *args, **kw):
        if fails["n"]:
            fails["n"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        return real(self, step, *args, **kw)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
    with pytest.warns(UserWarning, match="transient read error"):
        got = train.train(cfg, run, progress=False)
    assert fails["n"] == 0 and got["steps"] == 20 and got["loss"] == ref["loss"]
    assert not run.quarantine_dir.exists() and _steps(run.checkpoint_dir) == [10, 20]


def test_persistent_eio_fails_loudly_and_moves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "BACKOFF_S", 0.01)
    d = _two_checkpoints(tmp_path)
    m = checkpoint.manager(d, TrainConfig())
    _flaky(m, {20: 99})
    with pytest.warns(UserWarning), pytest.raises(OSError, match="after 4 attempts") as e:
        checkpoint.restore(m, _abstract(), tmp_path / "run" / "corrupt_checkpoints")
    assert e.value.errno == errno.EIO and "\n" not in str(e.value)
    assert _steps(d) == [10, 20] and not (tmp_path / "run" / "corrupt_checkpoints").exists()


def test_garbled_newest_checkpoint_is_the_only_one_quarantined(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "BACKOFF_S", 0.01)
    d = _two_checkpoints(tmp_path)
    _garble(d / "20")
    quarantine = tmp_path / "run" / "corrupt_checkpoints"
    m = checkpoint.manager(d, TrainConfig())
    _flaky(m, {10: 1})  # the good one also hits a transient error: retried, never moved
    with (
        pytest.warns(UserWarning, match="checkpoint 10: transient read error"),
        pytest.warns(UserWarning, match="checkpoint at step 20 is unreadable"),
    ):
        out = checkpoint.restore(m, _abstract(), quarantine)
    checkpoint.close(m)
    assert out.step == 10 and float(out.state["params"]["w"][0, 0]) == 10.0 and out.host == HOST
    assert _steps(d) == [10] and [p.name.split("-")[0] for p in quarantine.iterdir()] == ["20"]


def test_no_checkpoint_restoring_is_refused_and_moves_nothing(tmp_path):
    d = _two_checkpoints(tmp_path)
    _garble(d / "10")
    _garble(d / "20")
    m = checkpoint.manager(d, TrainConfig())
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint restores") as e:
        checkpoint.restore(m, _abstract(), tmp_path / "run" / "corrupt_checkpoints")
    assert "step 20: " in str(e.value) and "nothing was moved" in str(e.value)
    assert _steps(d) == [10, 20] and not (tmp_path / "run" / "corrupt_checkpoints").exists()


def test_checkpoint_of_another_shape_is_refused_not_quarantined(tmp_path):
    d = _two_checkpoints(tmp_path)
    m = checkpoint.manager(d, TrainConfig())
    with pytest.raises(ConfigError, match="holds another model than this config") as e:
        checkpoint.restore(m, _abstract((4, 16)), tmp_path / "run" / "corrupt_checkpoints")
    msg = str(e.value)
    assert str(tmp_path / "run") in msg and "params.w float32[4, 8] in the checkpoint" in msg
    assert _steps(d) == [10, 20] and not (tmp_path / "run" / "corrupt_checkpoints").exists()


# --- 4. all training state in the checkpoint --------------------------------------------------


def test_preempted_run_resumes_equal_to_uninterrupted_in_every_column(tmp_path, monkeypatch):
    cfg = _cfg(steps=30, gns=True, grad_accum=2)
    ref = train.train(cfg, RunDir(tmp_path / "ref"), progress=False)
    run = RunDir(tmp_path / "run")
    with monkeypatch.context() as mp:
        _sigterm_after_checkpoint(mp, 10)
        assert train.train(cfg, run, progress=False)["status"] == "preempted"
    got = train.train(cfg, run, progress=False)
    want = _columns(RunDir(tmp_path / "ref").read_metrics())
    assert "gns_b_simple" in want[-1] and "eval_loss_by_pos" in want[-1]
    # Every column but the wall-clock ones, bit for bit (NaN equals NaN: the early GNS rows).
    np.testing.assert_equal(_columns(run.read_metrics()), want)
    assert (got["loss"], got["train_loss"]) == (ref["loss"], ref["train_loss"])
    assert ref["peak_flops_source"] and ref["peak_flops_source"] in app.summary_paragraph(
        ref, "r"
    ).replace("\n", " ")


def test_data_position_is_a_pure_function_of_seed_and_step():
    tokens = np.arange(20_000, dtype=np.uint16)
    kw = dict(seed=3, end=12, batch_size=4, seq_len=8)
    with data.Prefetcher(tokens, start=0, **kw) as a, data.Prefetcher(tokens, start=7, **kw) as b:
        whole, resumed = list(a), list(b)
    np.testing.assert_array_equal(np.stack(whole[7:]), np.stack(resumed))


# --- 5. hostile infrastructure and bad input --------------------------------------------------


def test_disk_full_during_a_checkpoint_names_the_path_and_marks_failed(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    real = ocp.CheckpointManager.save

    def save(self, step, *args, **kw):
        if step == 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, step, *args, **kw)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    run = RunDir(tmp_path / "run")
    with pytest.raises(checkpoint.DiskFull) as e:
        train.train(_cfg(steps=30), run, progress=False)
    msg = str(e.value)
    assert e.value.errno == errno.ENOSPC and "\n" not in msg
    assert "disk full" in msg and str(run.checkpoint_dir) in msg
    assert run.read_summary()["status"] == "failed" and "disk full" in run.read_summary()["error"]
    assert _steps(run.checkpoint_dir) == [10]


TS_DISK_FULL = (
    'RESOURCE_EXHAUSTED: Error writing "params.w/0.0" in OCDBT database: Failed to write 197434 '
    "bytes to file 7: No space left on device [os_error_code='28'] [tensorstore_spec='{\n...'"
)


def test_disk_full_in_a_background_save_is_one_line_and_orbax_logs_are_dropped(
    tmp_path, monkeypatch, caplog
):
    import orbax.checkpoint as ocp

    m = checkpoint.manager(tmp_path / "run" / "checkpoints", TrainConfig())
    checkpoint.save(m, 10, _state(10.0), HOST)
    m.wait_until_finished()

    def wait(self):  # how orbax reports a failed async write: tensorstore's ValueError
        raise ValueError(TS_DISK_FULL)

    with monkeypatch.context() as mp:
        mp.setattr(ocp.CheckpointManager, "wait_until_finished", wait)
        with pytest.raises(checkpoint.DiskFull) as e:
            checkpoint.close(m)
    m.close()
    assert "\n" not in str(e.value) and str(tmp_path / "run" / "checkpoints") in str(e.value)
    # orbax also logs each failing thread's traceback (hundreds of lines); those are dropped.
    with caplog.at_level(logging.ERROR):
        logging.getLogger("absl").error("save thread failed", exc_info=ValueError(TS_DISK_FULL))
        logging.getLogger("asyncio").error("Task exception was never retrieved: " + TS_DISK_FULL)
        logging.getLogger("absl").error("another failure is still logged")
    assert [r.getMessage() for r in caplog.records] == ["another failure is still logged"]


def test_cli_disk_full_on_metrics_is_one_line_naming_the_run(tmp_path, monkeypatch, capsys):
    real, calls = store.append_jsonl, {"n": 0}

    def append(path, rows):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, rows)

    monkeypatch.setattr(store, "append_jsonl", append)
    run = tmp_path / "run"
    argv = ["train", "--no-progress", "--run-dir", str(run), *_overrides(_cfg(steps=30))]
    assert _main(argv, monkeypatch) == 2
    line = _one_line(capsys.readouterr().err)
    assert "disk full" in line and f"metrics to {run}" in line


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def test_real_disk_full_is_one_line_from_the_cli(tmp_path):
    small = tmp_path / "small"
    # Room for the config, manifest and metrics, not for a ~250 KB checkpoint.
    if not _mount_tmpfs(small, "160k"):
        pytest.skip("needs root to mount a tiny tmpfs")
    try:
        proc = _cli(_cfg(steps=30), small / "run")
        _, err = proc.communicate(timeout=300)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
    assert proc.returncode == 2
    line = _one_line(err.decode())  # not orbax's hundreds of lines of logged tracebacks
    assert "disk full" in line and str(small / "run" / "checkpoints") in line


STARTUP_SIGTERM = """
import importlib, os, signal, sys
module, name, argv = importlib.import_module(sys.argv[1]), sys.argv[2], sys.argv[3:]
real = getattr(module, name)
def with_sigterm(*args, **kw):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kw)
setattr(module, name, with_sigterm)
from jaxscale.cli.app import main
raise SystemExit(main(argv))
"""


@pytest.mark.parametrize(
    "module,name", [("jaxscale.core.data", "load_corpus"), ("jaxscale.core.train", "setup_group")]
)
def test_sigterm_during_startup_exits_cleanly_having_written_nothing(tmp_path, module, name):
    run = tmp_path / "run"
    argv = ["train", "--no-progress", "--run-dir", str(run), *_overrides(_cfg(steps=20))]
    env = {**os.environ, "JAXSCALE_NO_COMPILE_CACHE": "1"}
    cmd = [sys.executable, "-c", STARTUP_SIGTERM, module, name, *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "preempted" in _one_line(out.stderr) and "run the same command again" in out.stderr
    assert list(run.iterdir()) == []  # no config, manifest, metrics, checkpoint or lock


def test_sigterm_during_the_first_compile_checkpoints_that_step_and_stops(tmp_path, monkeypatch):
    real_setup = train.setup_group

    def setup_group(*args, **kw):
        g = real_setup(*args, **kw)
        fired = []

        def step_fn(*a):
            if not fired:  # the signal lands while the first call compiles
                fired.append(True)
                os.kill(os.getpid(), signal.SIGTERM)
            return g.step_fn(*a)

        return dataclasses.replace(g, step_fn=step_fn)

    monkeypatch.setattr(train, "setup_group", setup_group)
    run = RunDir(tmp_path / "run")
    s = train.train(_cfg(steps=20), run, progress=False)
    assert s["status"] == "preempted" and s["steps"] == 1
    assert _steps(run.checkpoint_dir) == [1] and [r["step"] for r in run.read_metrics()] == [1]


def test_batch_that_cannot_fit_is_refused_before_allocating(tmp_path):
    run = tmp_path / "run"
    # In a child process: before this check the OOM killer ended such a run without a word.
    proc = _cli(_cfg(steps=20).replace(**{"train.batch_size": 10**9}), run)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    line = _one_line(err.decode())
    assert "training needs at least" in line and "GiB of host memory" in line and "free" in line
    assert "activations of one microbatch" in line and "train.batch_size (now 1000000000)" in line
    assert not (run / "config.json").exists() and not (run / "checkpoints").exists()


def test_memory_estimate_counts_parameters_optimizer_and_activations():
    cfg = _cfg(steps=20)
    est = memory.estimate(cfg)
    assert est["parameters"] == cfg.model.n_params * 4 and est["optimizer"] == 2 * est["parameters"]
    accum = memory.estimate(cfg.replace(**{"train.grad_accum": 2}))
    assert accum["activations"] == est["activations"] / 2  # one microbatch at a time
    assert accum["gradients"] == 2 * est["gradients"]  # plus the accumulation buffer
    assert memory.estimate(cfg, K=3)["parameters"] == 3 * est["parameters"]
