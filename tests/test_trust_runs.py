"""Runs you can trust (issue 15): run identity, one lock discipline, broken study files, and
what else a results directory holds. Fast: RunDir directly and the runner with fake trainers."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import textwrap
import time
from pathlib import Path

import pytest

from jaxscale.cli import sweep
from jaxscale.config import ConfigError, ModelConfig, RunConfig, TrainConfig
from jaxscale.core import provenance
from jaxscale.runs import runner, store, study
from jaxscale.runs.rundir import MANIFEST, RunDir, RunMismatch, foreign_run_dirs

BASE = RunConfig(
    model=ModelConfig(d_model=16, n_layers=1, n_heads=1, d_ff=64, context_length=16),
    train=TrainConfig(batch_size=2, steps=4, warmup_steps=0, lr=0.003),
)
DATA = {"fingerprint": "9ae9c1d2e3f4a5b6", "source": "corpus-a", "tokenizer": "bytes"}


def _runs(n: int = 3) -> list[RunConfig]:
    return [BASE.replace(**{"train.lr": 0.001 * (i + 1)}) for i in range(n)]


def _done(cfg: RunConfig, run: RunDir, progress: bool = False) -> dict:
    summary = {"status": "done", "run_id": cfg.run_id(), "tokens": cfg.total_tokens, "loss": 1.0}
    run.write_summary(summary)
    return summary


def _live_lock(run_dir: Path, host: str = "other-host") -> None:
    """A lock of a live worker on another host (fresh heartbeat), as RunLock writes it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / store.LOCK_NAME).write_text(
        json.dumps({"token": "theirs", "pid": 1, "host": host, "heartbeat": time.time()})
    )


def _sweep_cli(argv: list[str]) -> int:
    """`jaxscale sweep ...` through its own parser (independent of the other commands)."""
    parser = argparse.ArgumentParser(prog="jaxscale")
    sweep.add_parser(parser.add_subparsers(dest="command"))
    return sweep.run(parser.parse_args(["sweep", *argv]))


def _one_line(err: str) -> str:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


# --- 1. run identity --------------------------------------------------------------------------


def test_claim_records_sessions_in_a_manifest(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.claim(BASE, DATA) == "new"
    run.append_metrics([{"step": 1, "loss": 3.0}])
    assert run.claim(BASE, DATA) == "resume"
    assert run.read_config_raw()["run_id"] == BASE.run_id()
    manifest = json.loads((run.path / MANIFEST).read_text())
    assert [s["session"] for s in manifest["sessions"]] == ["new", "resume"]
    first = manifest["sessions"][0]
    assert first["run_id"] == BASE.run_id() and first["config"]["train"]["lr"] == 0.003
    assert first["data"]["fingerprint"] == DATA["fingerprint"]
    assert first["environment"]["versions"]["jax"] and first["environment"]["host"]
    assert first["time_utc"].endswith("Z")


def test_claim_refuses_another_config_naming_the_keys(tmp_path):
    run = RunDir(tmp_path / "r")
    run.claim(BASE, DATA)
    other = BASE.replace(**{"train.lr": 0.03, "model.d_ff": 32})
    with pytest.raises(RunMismatch) as e:
        run.claim(other, DATA)
    msg = str(e.value)
    assert isinstance(e.value, ConfigError) and "\n" not in msg
    assert "train.lr 0.003 → 0.03" in msg and "model.d_ff 64 → 32" in msg
    assert "--run-dir" in msg and "--replace" in msg and f"{run.path}.replaced-" in msg
    assert run.read_config_raw()["train"]["lr"] == 0.003  # the old run is untouched


def test_claim_refuses_other_data(tmp_path):
    run = RunDir(tmp_path / "r")
    run.claim(BASE, DATA)
    with pytest.raises(RunMismatch, match=r"data fingerprint 9ae9c1d2… → 41c2aa00…"):
        run.claim(BASE, {**DATA, "fingerprint": "41c2aa00ffff"})


def test_claim_resumes_on_another_mesh_or_name(tmp_path):
    run = RunDir(tmp_path / "r")
    run.claim(BASE, DATA)
    renamed = BASE.replace(**{"name": "again", "mesh.spec": "data=1"})
    assert run.claim(renamed, DATA) == "resume"  # neither changes the result (the run_id)
    assert run.read_config() == renamed


def test_extending_a_finished_run_is_refused(tmp_path):
    run = RunDir(tmp_path / "r")
    run.claim(BASE, DATA)
    _done(BASE, run)
    with pytest.raises(RunMismatch) as e:
        run.claim(BASE.replace(**{"train.steps": 8}), DATA)
    assert "train.steps 4 → 8" in str(e.value)
    assert "extending a finished run is not supported; train a new run" in str(e.value)


def test_unreadable_run_files_are_refused_not_overwritten(tmp_path):
    run = RunDir(tmp_path / "r")
    run.claim(BASE, DATA)
    (run.path / MANIFEST).write_text("{not json")
    with pytest.warns(UserWarning), pytest.raises(RunMismatch, match="manifest.json is unreadable"):
        run.claim(BASE, DATA)
    assert (run.path / MANIFEST).read_text() == "{not json"
    (run.path / "config.json").write_text("")
    with pytest.warns(UserWarning), pytest.raises(RunMismatch, match="config.json is unreadable"):
        run.claim(BASE, DATA)
    assert (run.path / "config.json").read_text() == ""


def test_replace_moves_the_old_run_aside_and_never_deletes(tmp_path):
    run = RunDir(tmp_path / "r")
    run.claim(BASE, DATA)
    run.append_metrics([{"step": 1, "loss": 3.0}])
    lock = run.lock()
    with pytest.raises(ConfigError, match="being trained by"):
        run.move_aside()  # a live worker (this one) holds it
    lock.release()
    moved = run.move_aside()
    assert re.fullmatch(r"r\.replaced-\d{8}T\d{6}Z", moved.name)
    assert RunDir(moved).read_metrics() == [{"step": 1, "loss": 3.0}]
    assert not run.path.exists()
    assert run.claim(BASE.replace(**{"train.lr": 0.03}), DATA) == "new"


def test_package_version_change_is_recorded_and_warned_not_refused(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "r")
    real = provenance.environment()
    monkeypatch.setattr(
        provenance,
        "environment",
        lambda: {**real, "versions": {**real["versions"], "jax": "0.0.1"}},
    )
    run.claim(BASE, DATA)
    run.append_metrics([{"step": 1}])
    monkeypatch.setattr(provenance, "environment", lambda: real)
    with pytest.warns(UserWarning, match=r"other package versions.*jax 0\.0\.1 →"):
        assert run.claim(BASE, DATA) == "resume"
    last = run.sessions()[-1]
    assert last["version_changes"] == {"jax": ["0.0.1", real["versions"]["jax"]]}


def test_runner_leaves_a_mismatched_run_dir_untouched(tmp_path):
    data = dict(DATA)

    def claiming(cfg, run, progress=False):
        run.claim(cfg, data)
        s = {"status": "preempted", "run_id": cfg.run_id()}
        run.write_summary(s)
        return s

    res, logs = tmp_path / "res", []
    runner.run_sweep(_runs(1), res, train_fn=claiming, progress=False, log=logs.append)
    data["fingerprint"] = "41c2aa00ffff"  # the corpus files changed under the same config
    rep = runner.run_sweep(_runs(1), res, train_fn=claiming, progress=False, log=logs.append)
    assert (rep.failed, rep.trained, rep.exit_code) == (1, [], 1)
    assert "data fingerprint 9ae9c1d2… → 41c2aa00…" in logs[-1]
    run = RunDir.of(res, _runs(1)[0])
    assert run.status == "preempted" and not (run.path / "error.txt").exists()


# --- 2. one lock discipline -------------------------------------------------------------------


def test_lock_heartbeat_derives_from_the_timeout(tmp_path):
    lock = store.RunLock.acquire(tmp_path / "r", timeout=20)
    assert lock.heartbeat_s == 2.0
    lock.release()
    assert store.heartbeat_for(store.DEFAULT_LOCK_TIMEOUT_S) == 30.0


@pytest.mark.parametrize("timeout,heartbeat", [(2.0, None), (0.0, None), (20.0, 10.0)])
def test_unsafe_lock_timeouts_are_refused(tmp_path, timeout, heartbeat):
    with pytest.raises(ConfigError, match="lock"):
        store.RunLock.acquire(tmp_path / "r", timeout=timeout, heartbeat_s=heartbeat)
    with pytest.raises(ConfigError, match="lock"):
        RunDir(tmp_path / "r").lock(timeout=timeout, heartbeat_s=heartbeat)
    with pytest.raises(ConfigError, match="lock"):
        runner.run_sweep(
            _runs(1), tmp_path / "res", train_fn=_done, progress=False, lock_timeout=timeout,
            heartbeat_s=heartbeat,
        )  # fmt: skip
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").iterdir())


def test_cli_refuses_a_short_lock_timeout_in_one_line(tmp_path, capsys):
    argv = [str(tmp_path / "never_loaded.py"), "--results", str(tmp_path), "--lock-timeout", "3"]
    code = _sweep_cli(["run", *argv])
    err = _one_line(capsys.readouterr().err)
    assert code == 2 and "lock timeout 3.0 s is too short" in err


def test_lock_taken_over_is_noticed_by_its_writer(tmp_path):
    run = RunDir(tmp_path / "r")
    run.check_lock()  # no lock held by this process: nothing to check
    lock = run.lock()
    run.check_lock()
    _live_lock(run.path)  # another worker recovered it as stale and holds it now
    with pytest.raises(store.LockLost, match="other-host:1"):
        run.check_lock()
    assert lock.lost
    lock.release()
    assert store.lock_info(run.path)["token"] == "theirs"  # their lock survives our release


@pytest.mark.parametrize("then", ["finishes", "raises"])
def test_runner_does_not_record_a_taken_over_run(tmp_path, then):
    def taken_over(cfg, run, progress=False):
        _live_lock(run.path)  # our heartbeat lapsed; another worker took the run over
        if then == "raises":
            raise RuntimeError("lost the lock")
        return _done(cfg, run)

    res = tmp_path / "res"
    rep = runner.run_sweep(_runs(1), res, train_fn=taken_over, progress=False, log=lambda m: 0)
    run_id = _runs(1)[0].run_id()
    assert rep.trained == [] and rep.taken_over == [run_id]
    run = RunDir(res / run_id)
    assert not (run.path / "error.txt").exists()  # no failure written into their run
    if then == "raises":  # still theirs: held by a live worker
        assert (rep.running_elsewhere, rep.exit_code) == (1, 4)
    else:  # the run is done (by whoever): the share is finished
        assert (rep.done, rep.exit_code) == (1, 0)


def test_exit_4_while_other_live_workers_hold_runs_then_0(tmp_path):
    runs, res = _runs(3), tmp_path / "res"
    held = RunDir.of(res, runs[0])
    _live_lock(held.path)
    rep = runner.run_sweep(runs, res, train_fn=_done, progress=False, log=lambda m: 0)
    assert (rep.done, rep.running_elsewhere, rep.exit_code) == (2, 1, 4)
    assert "held by other live workers" in rep.reason and "sweep status" in rep.reason
    _done(runs[0], held)  # the other worker finishes
    (held.path / store.LOCK_NAME).unlink()
    rep = runner.run_sweep(runs, res, train_fn=_done, progress=False, log=lambda m: 0)
    assert (rep.done, rep.trained, rep.exit_code, rep.reason) == (3, [], 0, "")


def test_exit_3_when_another_worker_left_a_run_unfinished(tmp_path):
    runs, res = _runs(2), tmp_path / "res"
    theirs = RunDir.of(res, runs[0])
    _live_lock(theirs.path)

    def and_they_die(cfg, run, progress=False):
        theirs.append_metrics([{"step": 1, "loss": 3.0}])
        (theirs.path / store.LOCK_NAME).unlink()  # killed mid-run; its lock is gone
        return _done(cfg, run)

    rep = runner.run_sweep(runs, res, train_fn=and_they_die, progress=False, log=lambda m: 0)
    assert (rep.done, rep.unfinished, rep.exit_code) == (1, 1, 3)
    assert "rerun the same command" in rep.reason


def test_sweep_run_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        _sweep_cli(["run", "--help"])
    out = capsys.readouterr().out
    for code, words in [
        (0, "share is finished"),
        (1, "failed"),
        (2, "bad input"),
        (3, "preempted"),
        (4, "held by other live workers"),
    ]:
        assert re.search(rf"^\s+{code}\s+.*{words}", out, re.M), (code, out)


# --- 3. broken study files --------------------------------------------------------------------


@pytest.mark.parametrize(
    "source,line,needle",
    [
        ("X = 1\ndef runs(setting='default'):\n    return [\n", 3, "SyntaxError"),
        ("import os\nimport no_such_module_xyz\n", 2, "ModuleNotFoundError: No module named"),
        ("def runs(setting='default'):\n    x = 1\n    return [1 / 0]\n", 3, "ZeroDivisionError"),
        ("def runs(setting='default'):\n    return {'a': 1}\n", 1, "got a dict"),
        ("def runs(setting='default'):\n    return ['x']\n", 1, "item 0 is a str"),
        ("def runs(setting='default'):\n    return []\n", 1, "got an empty list"),
        (
            "from jaxscale.config import RunConfig, ModelConfig\n\n"
            "def runs(setting='default'):\n    return [RunConfig(model=ModelConfig(n_heads=5))]\n",
            4,
            "ConfigError",
        ),
    ],
)
def test_broken_study_file_is_one_line_with_file_and_line(tmp_path, capsys, source, line, needle):
    path = tmp_path / "broken_study.py"
    path.write_text(source)
    with pytest.raises(ConfigError) as e:
        study.load_study(path).runs()
    assert str(e.value).startswith(f"{path}:{line}: ") and needle in str(e.value)
    assert "\n" not in str(e.value)
    for cmd in ("run", "status"):
        code = _sweep_cli([cmd, str(path), "--results", str(tmp_path / "res")])
        err = _one_line(capsys.readouterr().err)
        assert code == 2 and f"{path}:{line}" in err


# --- 4. what else a results directory holds ---------------------------------------------------


def test_status_and_sweep_say_what_else_is_in_results(tmp_path, capsys):
    runs, res = _runs(2), tmp_path / "res"
    runner.run_sweep(runs, res, train_fn=_done, progress=False)
    ids = runner.study_run_ids(runs)
    assert ids == {r.run_id() for r in runs} and len(ids) == 2
    assert foreign_run_dirs(res, ids) == []
    assert runner.foreign_note(runs, res) is None
    other = BASE.replace(**{"train.lr": 0.5})
    RunDir.of(res, other).write_config(other)  # another study's run
    copy = res / f"{runs[0].run_id()}.replaced-20240101T000000Z"
    shutil.copytree(res / runs[0].run_id(), copy)  # a study run kept twice
    assert sorted(r.name for r in foreign_run_dirs(res, ids)) == sorted([other.run_id(), copy.name])
    note = runner.foreign_note(runs, res)
    assert "2 run dir(s) not in this study" in note and "1 repeat a study run's config" in note

    logs = []
    rep = runner.run_sweep(runs, res, train_fn=_done, progress=False, log=logs.append)
    assert rep.foreign == 2 and note in logs

    path = tmp_path / "two.py"
    lrs = [r.train.lr for r in runs]
    path.write_text(
        textwrap.dedent(
            f"""
            import json
            from jaxscale.config import RunConfig
            BASE = RunConfig.from_dict(json.loads({json.dumps(BASE.to_dict())!r}))

            def runs(setting="default"):
                return [BASE.replace(**{{"train.lr": lr}}) for lr in {lrs!r}]
            """
        )
    )
    assert _sweep_cli(["status", str(path), "--results", str(res)]) == 0
    out = capsys.readouterr().out
    assert "done: 2" in out and "2 run dir(s) not in this study" in out
    assert os.fspath(res) in out
