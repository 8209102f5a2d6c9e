"""A branched sweep killed with SIGKILL at random moments (mid-trunk, mid-branch, mid-save)
resumes to exactly the uninterrupted sweep: every run's loss curve and summary loss."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from jaxscale.runs import branches, runner, store
from jaxscale.runs.rundir import RunDir
from jaxscale.runs.study import load_study

STUDY = """
from jaxscale.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from jaxscale.runs.branches import branched

NAME = "branch_faults"


def runs(setting="default"):
    plain = [
        RunConfig(
            name=f"b{steps}",
            model=ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, context_length=32),
            data=DataConfig(max_bytes=2_000_000),
            train=TrainConfig(
                batch_size=8, steps=steps, warmup_steps=5, lr=1e-2, schedule="wsd",
                eval_every=40, checkpoint_every=10,
            ),
        )
        for steps in (200, 400, 600)
    ]
    return branched(plain, cooldown=0.2)
"""


def _losses(run_dir: Path) -> list[tuple]:
    return [
        (r["step"], r["loss"], r.get("eval_loss"))
        for r in store.read_jsonl(run_dir / "metrics.jsonl")
    ]


def _sweep(study: Path, results: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "jaxscale.cli",
        "sweep",
        "run",
        str(study),
        "--results",
        str(results),
        "--no-progress",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _rows(results: Path, cfg) -> list[dict]:
    return store.read_jsonl(RunDir.of(results, cfg).path / "metrics.jsonl")


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 600.0) -> bool:
    """SIGKILL `proc` as soon as `ready()` holds; False if the sweep ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    raise AssertionError("sweep made no progress")


def test_branched_sweep_survives_sigkills_anywhere(tmp_path):
    study = tmp_path / "branch_faults.py"
    study.write_text(STUDY)
    runs = load_study(study).runs()
    trunk = next(r for r in runs if branches.is_trunk(r))
    branch = [r for r in runs if branches.is_branch(r)]
    assert len(branch) == 3  # one trunk as long as the longest branch point, three branches
    ref = tmp_path / "ref"
    rep = runner.run_sweep(runs, ref, progress=False, log=lambda m: None)
    assert rep.exit_code == 0 and rep.done == 4, rep.reason

    res = tmp_path / "res"
    own = lambda: sum(sum("trunk" not in row for row in _rows(res, b)) for b in branch)  # noqa: E731
    every = lambda: sum(len(_rows(res, r)) for r in runs)  # noqa: E731
    delay = random.Random(0).uniform(0.0, 0.5)
    seen: dict[str, float] = {}

    def anywhere() -> bool:
        # a random moment once training resumed: a step, an eval or a checkpoint save
        if "t" not in seen and every() > seen["every"]:
            seen["t"] = time.monotonic()
        return "t" in seen and time.monotonic() > seen["t"] + delay

    moments = {
        "mid-trunk": lambda: len(_rows(res, trunk)) >= 100,
        "anywhere": anywhere,
        "mid-branch": lambda: own() > seen["own"],
    }
    for moment, ready in moments.items():
        seen.update(every=every(), own=own())
        proc = _sweep(study, res)
        assert _kill_when(proc, ready), f"the sweep finished before the {moment} kill"
    out = _sweep(study, res)
    _, err = out.communicate(timeout=600)
    assert out.returncode == 0, err.decode()[-2000:]
    for r in runs:
        assert _losses(RunDir.of(res, r).path) == _losses(RunDir.of(ref, r).path), r.name
        got, want = RunDir.of(res, r).read_summary(), RunDir.of(ref, r).read_summary()
        assert got["loss"] == want["loss"], r.name
