"""Training: learns the default corpus, resumes exactly after SIGKILL, checkpoints on SIGTERM."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxscale.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.core import data, train
from jaxscale.runs import store
from jaxscale.runs.rundir import RunDir

DATA = DataConfig(max_bytes=2_000_000)


def _cfg(steps=60, **train_kw):
    return RunConfig(
        model=ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, context_length=32),
        data=DATA,
        train=TrainConfig(
            batch_size=8,
            steps=steps,
            warmup_steps=5,
            lr=1e-2,
            eval_every=20,
            checkpoint_every=10,
            **train_kw,
        ),
    )


def _overrides(cfg: RunConfig) -> list[str]:
    flat = []
    for sec in ("model", "data", "train"):
        for k, v in cfg.to_dict()[sec].items():
            flat.append(f"--{sec}.{k}={'null' if v is None else v}")
    return flat


def _cli(cfg, run_dir, **kw):
    cmd = [
        sys.executable,
        "-m",
        "jaxscale.cli",
        "train",
        "--no-progress",
        "--run-dir",
        str(run_dir),
    ]
    return subprocess.Popen(
        cmd + _overrides(cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
    )


def _losses(run_dir):
    return [
        (r["step"], r["loss"], r.get("eval_loss"))
        for r in store.read_jsonl(run_dir / "metrics.jsonl")
    ]


def test_learns_well_below_unigram_entropy(tmp_path):
    cfg = RunConfig(
        model=ModelConfig(d_model=64, n_layers=2, n_heads=2, d_ff=256, context_length=64),
        data=DATA,
        train=TrainConfig(batch_size=16, steps=200, warmup_steps=10, lr=3e-3, eval_every=50),
    )
    corpus = data.load_corpus(cfg.data)
    counts = np.bincount(np.asarray(corpus.train), minlength=corpus.vocab_size).astype(float)
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log(p)).sum())
    s = train.train(cfg, RunDir(tmp_path / "r"), progress=False, corpus=corpus)
    assert s["status"] == "done" and s["steps"] == 200
    assert s["loss"] < unigram - 0.5, (s["loss"], s["train_loss"], unigram)  # nats
    rows = store.read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 201))
    assert rows[-1]["tokens"] == 200 * 16 * 64
    assert rows[-1]["flops"] > 0 and all(math.isfinite(r["loss"]) for r in rows)
    assert (tmp_path / "r" / "config.json").exists()
    assert set(s["flops"]) >= {"kaplan", "chinchilla", "exact"}


def _wait_for_checkpoint(run_dir: Path, step: int, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        ck = run_dir / "checkpoints"
        done = [int(p.name) for p in ck.glob("[0-9]*") if p.name.isdigit()] if ck.exists() else []
        if any(d >= step for d in done):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


# Wall-clock columns differ between any two runs; a resumed run must match in every other one.
WALL_CLOCK = ("tokens_per_s", "mfu", "time")


def _columns(run_dir):
    rows = store.read_jsonl(run_dir / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


def test_sigkill_resume_equals_uninterrupted(tmp_path):
    # With the gradient noise scale, whose EMA lives on the host and must be checkpointed too.
    cfg = _cfg(steps=300, grad_accum=2, gns=True)
    ref = train.train(cfg, RunDir(tmp_path / "ref"), progress=False)
    run = tmp_path / "killed"
    proc = _cli(cfg, run)
    _wait_for_checkpoint(run, 30, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists(), "killed too late to test resume"
    out = _cli(cfg, run)
    _, err = out.communicate(timeout=300)
    assert out.returncode == 0, err.decode()[-2000:]
    got = store.read_json(run / "summary.json")
    assert got["status"] == "done" and got["steps"] == 300
    want = _columns(tmp_path / "ref")
    assert "gns_b_simple" in want[-1] and "eval_loss_by_pos" in want[-1]
    np.testing.assert_equal(_columns(run), want)  # bit for bit; NaN equals NaN (early GNS rows)
    assert got["loss"] == ref["loss"] and got["train_loss"] == ref["train_loss"]


def test_sigterm_checkpoints_and_exits_zero(tmp_path):
    cfg = _cfg(steps=100_000)
    run = tmp_path / "pre"
    proc = _cli(cfg, run)
    _wait_for_checkpoint(run, 10, proc)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert time.time() - t0 < 30
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "preempted"
    assert (run / "checkpoints" / str(s["steps"])).exists()
    rows = store.read_jsonl(run / "metrics.jsonl")
    assert rows[-1]["step"] == s["steps"]


def test_divergence_is_marked_and_curve_kept(tmp_path):
    cfg = _cfg(steps=200, grad_clip=0.0).replace(**{"train.lr": 1e4, "train.warmup_steps": 0})
    s = train.train(cfg, RunDir(tmp_path / "d"), progress=False)
    assert s["status"] == "diverged" and "non-finite" in s["error"]
    rows = store.read_jsonl(tmp_path / "d" / "metrics.jsonl")
    assert rows and not math.isfinite(rows[-1]["loss"])
    assert all(math.isfinite(r["loss"]) for r in rows[:-1])
    assert s["steps"] == rows[-1]["step"] < 200
    assert s["error"].endswith(f"step {rows[-1]['step']}")


def test_gns_logged_when_accumulating(tmp_path):
    cfg = _cfg(steps=30, grad_accum=2, gns=True)
    train.train(cfg, RunDir(tmp_path / "g"), progress=False)
    rows = store.read_jsonl(tmp_path / "g" / "metrics.jsonl")
    vals = [r["gns_b_simple"] for r in rows[5:]]
    assert all(np.isfinite(vals)) and np.median(vals) > 0


def test_unwritable_run_dir_fails_before_training(tmp_path):
    if os.geteuid() == 0:
        target = Path("/proc/jaxscale-cannot-write-here")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "run"
    with pytest.raises(ValueError, match="not writable"):
        train.train(_cfg(steps=5), RunDir(target), progress=False)


def test_relative_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = train.train(_cfg(steps=12), RunDir(Path("rel") / "run"), progress=False)
    assert s["status"] == "done" and (tmp_path / "rel" / "run" / "checkpoints" / "12").is_dir()
