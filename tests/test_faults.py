"""Fault injection: corrupt checkpoints, repeated SIGKILLs, disk errors mid-run."""

import errno
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxscale.core import train
from jaxscale.runs import store
from jaxscale.runs.rundir import RunDir

sys.path.insert(0, str(Path(__file__).parent))
from test_train import _cfg, _cli, _losses  # noqa: E402


def _corrupt(ckpt_dir: Path) -> None:
    files = [p for p in ckpt_dir.rglob("*") if p.is_file()]
    assert files
    for p in files:
        p.write_bytes(b"\\x00garbage")


def test_corrupt_latest_checkpoint_is_skipped_with_warning(tmp_path):
    cfg = _cfg(steps=30)
    ref = train.train(cfg, RunDir(tmp_path / "ref"), progress=False)
    run = tmp_path / "run"
    # Finish the run, then corrupt its final checkpoint and drop the summary: a restart must
    # skip step 30, resume from step 20 and reproduce the uninterrupted run.
    train.train(cfg, RunDir(run), progress=False)
    (run / "summary.json").unlink()
    _corrupt(run / "checkpoints" / "30")
    with pytest.warns(UserWarning, match="step 30 is unreadable"):
        got = train.train(cfg, RunDir(run), progress=False)
    assert got["status"] == "done" and got["loss"] == ref["loss"]
    assert _losses(run) == _losses(tmp_path / "ref")
    # Only the bad checkpoint was moved aside; the good one it resumed from stayed.
    assert [p.name.split("-")[0] for p in (run / "corrupt_checkpoints").iterdir()] == ["30"]


def test_partial_checkpoint_dir_is_never_loaded(tmp_path):
    cfg = _cfg(steps=20)
    ref = train.train(cfg, RunDir(tmp_path / "ref"), progress=False)
    run = tmp_path / "run"
    train.train(cfg, RunDir(run), progress=False)
    (run / "summary.json").unlink()
    # A save interrupted by SIGKILL leaves orbax's temporary directory behind.
    tmp = run / "checkpoints" / "25.orbax-checkpoint-tmp-1234"
    tmp.mkdir()
    (tmp / "junk").write_text("half written")
    got = train.train(cfg, RunDir(run), progress=False)
    assert got["loss"] == ref["loss"] and got["steps"] == 20


@pytest.mark.slow
def test_random_sigkills_then_resume_equals_uninterrupted(tmp_path):
    cfg = _cfg(steps=400)
    train.train(cfg, RunDir(tmp_path / "ref"), progress=False)
    run = tmp_path / "run"
    rng = random.Random(0)
    for _ in range(3):
        proc = _cli(cfg, run)
        time.sleep(rng.uniform(6.0, 12.0))  # start-up is ~5 s; kills land mid-training or mid-save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (run / "summary.json").exists():
            break
    out = _cli(cfg, run)
    _, err = out.communicate(timeout=300)
    assert out.returncode == 0, err.decode()[-2000:]
    assert _losses(run) == _losses(tmp_path / "ref")


def test_disk_full_mid_run_stops_cleanly_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    cfg = _cfg(steps=40)
    run = tmp_path / "run"
    calls = {"n": 0}
    real = store.append_jsonl

    def flaky(path, rows):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, rows)

    monkeypatch.setattr(store, "append_jsonl", flaky)
    with pytest.raises(OSError, match="No space left"):
        train.train(cfg, RunDir(run), progress=False)
    monkeypatch.setattr(store, "append_jsonl", real)
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] == 20
    ref = train.train(cfg, RunDir(tmp_path / "ref"), progress=False)
    got = train.train(cfg, RunDir(run), progress=False)
    assert got["loss"] == ref["loss"]
    assert _losses(run) == _losses(tmp_path / "ref")


def test_cli_reports_disk_error_in_one_line(tmp_path):
    ro = tmp_path / "file-not-dir"
    ro.write_text("x")
    out = subprocess.run(
        [sys.executable, "-m", "jaxscale.cli", "train", "--run-dir", str(ro / "run")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "not writable" in out.stderr
    assert "Traceback" not in out.stderr
