"""The run directory: the one reader and writer of a run's files.

Layout of ``<results>/<run_id>/`` (or any directory given to ``jaxscale train``)::

    config.json        the full RunConfig and its run_id
    manifest.json      one record per training session: config, data identity, environment
    metrics.jsonl      one JSON row per logged step (append-only; truncated on resume)
    summary.json       status done/diverged/preempted/failed, final losses, FLOPs
    eval.json          checkpoint evaluations on named eval sets
    error.txt          the traceback of a failed run
    checkpoints/       orbax checkpoints (core.checkpoint)
    corrupt_checkpoints/   checkpoints proven unreadable, kept for inspection
    tensorboard/       TensorBoard event files mirroring metrics.jsonl (core.tracking)
    .lock              the live worker's claim (store.RunLock)

Nothing else in jaxscale names these files; the training loop writes through this class.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxscale.config import ConfigError, RunConfig
from jaxscale.core import provenance
from jaxscale.runs import store

CONFIG = "config.json"
MANIFEST = "manifest.json"
REPLACED = ".replaced-"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
EVAL = "eval.json"
ERROR = "error.txt"
CHECKPOINTS = "checkpoints"
QUARANTINE = "corrupt_checkpoints"
TENSORBOARD = "tensorboard"
TERMINAL = ("done", "diverged", "failed")


class RunMismatch(ConfigError):
    """A run directory already holds a different run (another config or other data)."""

    def __init__(self, path: Any, differences: Sequence[str]) -> None:
        self.path = path
        self.differences = tuple(differences)
        super().__init__(
            f"{path} holds a different run ({'; '.join(differences)}): pass another --run-dir, "
            f"or --replace to move the old run aside to {path}{REPLACED}<UTC time>"
        )


@dataclass(frozen=True)
class RunDir:
    """One run's directory; every file access of a run goes through here."""

    path: Any  # pathlib.Path, or etils.epath.Path for read-only URIs (store.as_path)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", store.as_path(self.path))

    @classmethod
    def of(cls, results: str | os.PathLike, cfg: RunConfig) -> RunDir:
        """<results>/<run_id> of cfg."""
        return cls(store.as_path(results) / cfg.run_id())

    def trunk(self, run_id: str) -> RunDir:
        """The directory of trunk run `run_id`: a sibling in the same results directory."""
        return RunDir(self.path.parent / run_id)

    @property
    def name(self) -> str:
        return self.path.name

    def is_run(self) -> bool:
        """True when the directory holds a run (a config.json)."""
        return (self.path / CONFIG).exists()

    def check_writable(self) -> None:
        """Create the directory and prove this process can write there, or raise ConfigError."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            # Unique per process: hosts sharing a run directory must not delete each other's probe.
            probe = self.path / f".write_probe.{socket.gethostname()}.{os.getpid()}"
            probe.write_text("ok")
            probe.unlink(missing_ok=True)
        except OSError as e:
            raise ConfigError(f"run directory {str(self.path)!r} is not writable: {e}") from None

    # --- config ---------------------------------------------------------------------------

    def write_config(self, cfg: RunConfig) -> None:
        store.write_json_atomic(self.path / CONFIG, {**cfg.to_dict(), "run_id": cfg.run_id()})

    def read_config_raw(self) -> dict | None:
        """config.json as stored (with its run_id), or None if missing or unreadable."""
        return store.read_json(self.path / CONFIG)

    def read_config(self) -> RunConfig:
        """The RunConfig stored here; ConfigError naming the file if missing or invalid."""
        raw = self.read_config_raw()
        if raw is None:
            raise ConfigError(
                f"{self.path / CONFIG} is missing or unreadable: not a run directory written by "
                "`jaxscale train` / `jaxscale sweep run`"
            )
        try:
            return RunConfig.from_dict({k: v for k, v in raw.items() if k != "run_id"})
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{self.path / CONFIG}: invalid config ({e})") from None

    # --- identity: which run this directory holds -----------------------------------------

    def sessions(self) -> list[dict]:
        """The training sessions recorded in manifest.json, oldest first ([] without one)."""
        if not (self.path / MANIFEST).exists():
            return []
        m = store.read_json(self.path / MANIFEST)
        if not isinstance(m, dict) or not isinstance(m.get("sessions"), list):
            raise RunMismatch(self.path, [f"{MANIFEST} is unreadable"])
        return m["sessions"]

    def check_identity(self, cfg: RunConfig, data: dict) -> str:
        """'new' or 'resume' if cfg may train here on `data` (core.provenance.data_identity);
        RunMismatch naming every differing field if the directory holds another run."""
        data = _plain(data)
        if not (self.path / CONFIG).exists():
            if self.has_checkpoints():
                raise RunMismatch(self.path, [f"checkpoints but no {CONFIG}"])
            return "new"
        old = self.read_config_raw()
        if old is None:
            raise RunMismatch(self.path, [f"{CONFIG} is unreadable"])
        sessions = self.sessions()
        diffs = []
        if old.get("run_id") != cfg.run_id():
            diffs += _config_diff(old, _plain(cfg.to_dict())) or [
                f"run_id {old.get('run_id')} → {cfg.run_id()}"
            ]
            old_steps = old.get("train", {}).get("steps")
            if self.is_finished() and isinstance(old_steps, int) and cfg.train.steps > old_steps:
                diffs.append("extending a finished run is not supported; train a new run")
        seen = sessions[-1].get("data", {}) if sessions else {}
        if seen.get("fingerprint") and seen["fingerprint"] != data.get("fingerprint"):
            diffs.append(
                f"data fingerprint {_short(seen['fingerprint'])} → {_short(data.get('fingerprint'))}"
            )
            diffs += [
                f"data {k} {_fmt(seen.get(k))} → {_fmt(data.get(k))}"
                for k in sorted(set(seen) | set(data))
                if k != "fingerprint" and seen.get(k) != data.get(k)
            ]
        was = provenance.semantics_of(sessions)
        if sessions and was != provenance.TRAINING_SEMANTICS:
            diffs.append(
                f"training semantics {provenance.semantics_label(was)} → {provenance.TRAINING_SEMANTICS}: "
                "this code trains the same config differently, so the run cannot be continued"
            )
        if diffs:
            raise RunMismatch(self.path, diffs)
        if sessions or self.has_checkpoints() or self.has_metrics():
            if not sessions:
                warnings.warn(
                    f"{self.path}: no {MANIFEST} (a run from before data identities were "
                    f"recorded); resuming without checking that the data is the same",
                    stacklevel=2,
                )
            return "resume"
        return "new"

    def claim(self, cfg: RunConfig, data: dict) -> str:
        """Check this directory holds cfg's run on `data` (RunMismatch if not), then record the
        session: config.json and a manifest.json entry. Returns 'new' or 'resume'."""
        kind = self.check_identity(cfg, data)
        sessions = self.sessions()
        env = provenance.environment()
        before = sessions[-1].get("environment", {}).get("versions", {}) if sessions else {}
        changed = {
            k: [before.get(k), v]
            for k, v in env["versions"].items()
            if k in before and before[k] != v
        }
        if changed:
            warnings.warn(
                f"{self.path}: resuming with other package versions than the last session ("
                + ", ".join(f"{k} {a} → {b}" for k, (a, b) in changed.items())
                + f"); recorded in {MANIFEST}",
                stacklevel=2,
            )
        now = time.time()
        record = {
            "session": kind,
            "time": now,
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "run_id": cfg.run_id(),
            "config": cfg.to_dict(),
            "data": _plain(data),
            "environment": env,
            "version_changes": changed,
        }
        self.write_config(cfg)
        store.write_json_atomic(
            self.path / MANIFEST, {"run_id": cfg.run_id(), "sessions": [*sessions, record]}
        )
        return kind

    def move_aside(self) -> Path:
        """Rename this run to <dir>.replaced-<UTC time> (nothing is deleted); the new path.
        ConfigError if a live worker holds the run."""
        holder = self.lock_holder()
        if holder is not None:
            raise ConfigError(
                f"{self.path} is being trained by {holder.get('host')}:{holder.get('pid')}; "
                f"stop that worker before replacing the run"
            )
        src = Path(self.path)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = src.with_name(f"{src.name}{REPLACED}{stamp}")
        n = 1
        while dest.exists():  # two replacements within one second
            dest = src.with_name(f"{src.name}{REPLACED}{stamp}-{n}")
            n += 1
        os.rename(src, dest)
        return dest

    # --- metrics --------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Any:
        return self.path / METRICS

    def has_metrics(self) -> bool:
        return self.metrics_path.exists()

    def append_metrics(self, rows: Sequence[dict]) -> None:
        store.append_jsonl(self.metrics_path, list(rows))

    def read_metrics(self) -> list[dict]:
        """Logged rows; corrupt lines are skipped with a warning naming file and line."""
        return store.read_jsonl(self.metrics_path)

    def truncate_metrics(self, step: int) -> None:
        """Drop rows past `step` (on resume, so a curve never holds a step twice)."""
        store.truncate_jsonl_after(self.metrics_path, step)

    # --- summary, eval results, errors ----------------------------------------------------

    def write_summary(self, summary: dict) -> None:
        store.write_json_atomic(self.path / SUMMARY, summary)

    def read_summary(self) -> dict | None:
        """summary.json, or None if missing or unreadable (with a warning naming it)."""
        return store.read_json(self.path / SUMMARY)

    def has_summary_file(self) -> bool:
        return (self.path / SUMMARY).exists()

    @property
    def status(self) -> str | None:
        """The summary's status (done/diverged/preempted/failed), or None without one."""
        s = self.read_summary()
        return s.get("status") if s else None

    def is_finished(self, terminal: Sequence[str] = TERMINAL) -> bool:
        return self.status in terminal

    def write_eval(self, result: dict) -> None:
        store.write_json_atomic(self.path / EVAL, result)

    def read_eval(self) -> dict | None:
        return store.read_json(self.path / EVAL)

    def write_error(self, text: str) -> None:
        (self.path / ERROR).write_text(text)

    # --- checkpoints ----------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        # orbax needs an absolute path (relative ones fail inside its OCDBT layer).
        return Path(self.path / CHECKPOINTS).absolute()

    @property
    def quarantine_dir(self) -> Path:
        return Path(self.path / QUARANTINE).absolute()

    @property
    def tensorboard_dir(self) -> Path:
        """TensorBoard event files (core.tracking): a mirror of metrics.jsonl for viewing."""
        return Path(self.path / TENSORBOARD)

    def has_checkpoints(self) -> bool:
        d = self.path / CHECKPOINTS
        return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())

    # --- locks ----------------------------------------------------------------------------

    def lock(
        self, *, timeout: float = store.DEFAULT_LOCK_TIMEOUT_S, heartbeat_s: float | None = None
    ) -> store.RunLock | None:
        """Claim this run for this worker; None if another live worker holds it. The heartbeat
        defaults to timeout/10; ConfigError for an unsafe timeout (store.heartbeat_for)."""
        return store.RunLock.acquire(self.path, timeout=timeout, heartbeat_s=heartbeat_s)

    def check_lock(self) -> None:
        """Raise store.LockLost if this process locked the run and another worker took it over
        (a no-op for runs trained without a lock)."""
        lock = store.held_lock(self.path)
        if lock is not None:
            lock.check()

    def lock_info(self) -> dict | None:
        """The lock file's contents (pid, host, token, heartbeat), live or stale, or None."""
        return store.lock_info(self.path) if self.path.exists() else None

    def lock_holder(self, timeout: float = store.DEFAULT_LOCK_TIMEOUT_S) -> dict | None:
        """The lock info of a live worker holding this run (see store.lock_is_stale), or None."""
        info = self.lock_info()
        return info if info is not None and not store.lock_is_stale(info, timeout) else None


def run_dirs(root: str | os.PathLike, *, require: bool = False) -> list[RunDir]:
    """The run directory itself, or every run directory under a results directory (by name)."""
    p = store.as_path(root)
    if not p.exists():
        raise FileNotFoundError(f"{os.fspath(root)!r} does not exist")
    if RunDir(p).is_run():
        return [RunDir(p)]
    out = sorted(
        (RunDir(q) for q in p.iterdir() if q.is_dir() and RunDir(q).is_run()),
        key=lambda r: r.name,
    )
    if require and not out:
        raise FileNotFoundError(f"{os.fspath(root)!r} holds no run directories (no */{CONFIG})")
    return out


def foreign_run_dirs(results: str | os.PathLike, run_ids: Collection[str]) -> list[RunDir]:
    """Run directories under `results` that are none of run_ids: other studies' runs, runs
    moved aside by --replace, copies."""
    p = store.as_path(results)
    return [r for r in run_dirs(p) if r.name not in run_ids] if p.is_dir() else []


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_diff(old: dict, new: dict) -> list[str]:
    """'key old → new' for every dotted config key that changes the run_id."""
    # name and mesh are not part of the run_id (a run may resume on another mesh).
    skip = ("run_id", "name", "mesh")
    a = _flat({k: v for k, v in old.items() if k not in skip})
    b = _flat({k: v for k, v in new.items() if k not in skip})
    return [
        f"{k} {_fmt(a.get(k, '(absent)'))} → {_fmt(b.get(k, '(absent)'))}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "(absent)") != b.get(k, "(absent)")
    ]


def _plain(obj: dict) -> dict:
    """obj as it reads back from JSON (tuples become lists), so comparisons see values only."""
    return json.loads(json.dumps(obj, default=str))


def _fmt(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 40 else s[:39] + "…"


def _short(fingerprint: Any) -> str:
    return f"{str(fingerprint)[:8]}…"
