"""The run directory: the one reader and writer of a run's files.

Layout of ``<results>/<run_id>/`` (or any directory given to ``jaxscale train``)::

    config.json        the full RunConfig and its run_id
    metrics.jsonl      one JSON row per logged step (append-only; truncated on resume)
    summary.json       status done/diverged/preempted/failed, final losses, FLOPs
    eval.json          checkpoint evaluations on named eval sets
    error.txt          the traceback of a failed run
    checkpoints/       orbax checkpoints (core.checkpoint)
    corrupt_checkpoints/   checkpoints proven unreadable, kept for inspection
    .lock              the live worker's claim (store.RunLock)

Nothing else in jaxscale names these files; the training loop writes through this class.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxscale.config import ConfigError, RunConfig
from jaxscale.runs import store

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
EVAL = "eval.json"
ERROR = "error.txt"
CHECKPOINTS = "checkpoints"
QUARANTINE = "corrupt_checkpoints"
TERMINAL = ("done", "diverged", "failed")


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

    def has_checkpoints(self) -> bool:
        d = self.path / CHECKPOINTS
        return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())

    # --- locks ----------------------------------------------------------------------------

    def lock(self, *, timeout: float = 300.0, heartbeat_s: float = 30.0) -> store.RunLock | None:
        """Claim this run for this worker; None if another live worker holds it."""
        return store.RunLock.acquire(self.path, timeout=timeout, heartbeat_s=heartbeat_s)

    def lock_info(self) -> dict | None:
        """The lock file's contents (pid, host, token, heartbeat), live or stale, or None."""
        return store.lock_info(self.path) if self.path.exists() else None

    def lock_holder(self, timeout: float = 300.0) -> dict | None:
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
