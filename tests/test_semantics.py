"""Training semantics: a run records what its config meant to the loop; a resume, a branch or an
analysis never mixes runs that trained the same config differently (the LR schedule applied
twice before 2026-11-30 left every run ID unchanged)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jaxscale.config import ConfigError
from jaxscale.core import provenance, train
from jaxscale.runs import branches, runner, selection
from jaxscale.runs.rundir import RunDir, RunMismatch

sys.path.insert(0, str(Path(__file__).parent))
from test_train import _cfg  # noqa: E402

# The commit before the schedule fix (b38e776): code that applied the LR schedule twice.
BEFORE_FIX = "00ce98dc500cdfc46f9e0b71b336c4a8444283fc"


def _make_legacy(run: RunDir, commit: str = BEFORE_FIX, semantics: int | None = None) -> None:
    """Rewrite the manifest as an older session wrote it at `commit`: without the field, or
    recording `semantics`."""
    path = run.path / "manifest.json"
    m = json.loads(path.read_text())
    for s in m["sessions"]:
        s["environment"].pop("training_semantics", None)
        if semantics is not None:
            s["environment"]["training_semantics"] = semantics
        s["environment"]["git"] = {"commit": commit, "dirty": True}
    path.write_text(json.dumps(m))


def test_unrecorded_sessions_are_dated_by_their_commit(tmp_path):
    head = provenance.git_state()
    if head is None:
        pytest.skip("not a git checkout: unrecorded sessions stay unrecorded")
    cfg = _cfg(steps=6)
    run = RunDir(tmp_path / "r")
    train.train(cfg, run, progress=False)
    _make_legacy(run, commit=head["commit"])  # a checkout after the fix, before the record
    assert provenance.semantics_of(run.sessions()) == 2
    _make_legacy(run)
    assert provenance.semantics_of(run.sessions()) is None


def test_resume_of_a_run_with_other_semantics_is_refused(tmp_path):
    cfg = _cfg(steps=20)
    run = RunDir(tmp_path / "r")
    train.train(cfg, run, progress=False)
    assert provenance.semantics_of(run.sessions()) == provenance.TRAINING_SEMANTICS
    # Preempted at step 10 under the old code: its resume must not continue it.
    run.path.joinpath("summary.json").unlink()
    run.truncate_metrics(10)
    _make_legacy(run)
    now = provenance.TRAINING_SEMANTICS
    with pytest.raises(RunMismatch, match=f"training semantics unrecorded .* → {now}"):
        train.train(cfg, run, progress=False)
    _make_legacy(run, commit=BEFORE_FIX, semantics=now - 1)  # recorded, one version back
    with pytest.raises(RunMismatch, match=f"training semantics {now - 1} → {now}"):
        train.train(cfg, run, progress=False)
    assert [r["step"] for r in run.read_metrics()][-1] == 10  # nothing written


def test_analysis_refuses_mixed_semantics_and_branch_refuses_an_old_trunk(tmp_path):
    plain = [_cfg(steps=s, schedule="wsd") for s in (20, 40)]
    runs = branches.branched(plain, cooldown=0.25)
    res = tmp_path / "res"
    trunks = [r for r in runs if branches.is_trunk(r)]
    rep = runner.run_sweep(trunks, res, progress=False, log=lambda m: None)
    assert rep.exit_code == 0
    ids = {r.name for r in RunDir(res).path.iterdir() if r.is_dir()}
    assert selection.select(res, ids, all_runs=True).run_ids is None  # one semantics: fine

    _make_legacy(RunDir.of(res, trunks[0]))
    branch = next(r for r in runs if branches.is_branch(r))
    with pytest.raises(ConfigError, match="trunk .* training semantics unrecorded"):
        train.train(branch, RunDir.of(res, branch), progress=False)
    assert not RunDir.of(res, branch).has_metrics()

    other = _cfg(steps=10)
    train.train(other, RunDir.of(res, other), progress=False)
    with pytest.raises(ConfigError, match="mixes runs trained under different training semantics"):
        selection.select(res, ids | {other.run_id()}, all_runs=True)
    out = subprocess.run(
        [sys.executable, "-m", "jaxscale.cli", "lr", str(res), "--all-runs"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert "training semantics" in out.stderr and len(out.stderr.strip().splitlines()) == 1
