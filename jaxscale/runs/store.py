"""Run-store primitives: atomic JSON writes, append-only JSONL metrics, robust reads."""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from jaxscale.config import ConfigError


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON via a temp file + fsync + rename so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path) -> dict | None:
    """Parsed JSON, or None (with a warning naming the file) if missing or corrupt."""
    path = as_path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        warnings.warn(f"{path}: unreadable JSON ({e}); ignoring it", stacklevel=2)
        return None


def append_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Append rows as JSON lines and fsync (one write per call keeps lines whole)."""
    if not rows:
        return
    blob = "".join(json.dumps(r, default=_default, allow_nan=True) + "\n" for r in rows)
    with open(path, "a") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a corrupt or truncated line is skipped with a warning naming it."""
    path = as_path(path)
    if not path.exists():
        return []
    rows = []
    text = path.read_bytes().decode("utf-8", errors="replace")
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{i}: corrupt or truncated line skipped", stacklevel=2)
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            warnings.warn(f"{path}:{i}: not a JSON object, skipped", stacklevel=2)
    return rows


def truncate_jsonl_after(path: str | Path, step: int) -> None:
    """Drop metric rows past `step` (used on resume so the curve has no duplicates)."""
    path = Path(path)
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path) if r.get("step", -1) <= step]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write("".join(json.dumps(r, default=_default) + "\n" for r in keep))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- paths beyond the local filesystem ------------------------------------------------------


def as_path(path: str | os.PathLike) -> Any:
    """A pathlib.Path, or an etils.epath.Path for URIs like gs://... (read-only use here).

    Writes and run locks need POSIX semantics (O_EXCL create, atomic rename), so the sweep
    runner requires a local or network-mounted POSIX directory; the loader can read any
    filesystem etils.epath supports when etils is installed (it ships with orbax).
    """
    s = os.fspath(path)
    if "://" not in s:
        return Path(s)
    try:
        from etils import epath
    except ImportError:
        raise ValueError(
            f"{s!r} is a URI; reading it needs etils.epath (pip install 'etils[epath]')"
        ) from None
    return epath.Path(s)


# --- per-run locks --------------------------------------------------------------------------

LOCK_NAME = ".lock"
DEFAULT_LOCK_TIMEOUT_S = 300.0
# Shorter timeouts let a slow filesystem or a busy host lose a live lock to another worker.
MIN_LOCK_TIMEOUT_S = 10.0
HEARTBEATS_PER_TIMEOUT = 10
_RECOVER_STALE_S = 60.0
# The locks this process holds, by absolute run directory, so a run's writer can check its own.
_HELD: dict[str, RunLock] = {}


class LockLost(RuntimeError):
    """Another worker took over a run lock this process held (its heartbeat lapsed)."""


def heartbeat_for(timeout: float, heartbeat_s: float | None = None) -> float:
    """The heartbeat interval for a lock timeout (timeout/10 unless given); ConfigError if the
    pair would let other workers take over a live lock."""
    if not (
        isinstance(timeout, (int, float))
        and math.isfinite(timeout)
        and timeout >= MIN_LOCK_TIMEOUT_S
    ):
        raise ConfigError(
            f"lock timeout {timeout!r} s is too short: use at least {MIN_LOCK_TIMEOUT_S:g} s "
            f"(another worker takes a run over after that long without a heartbeat)"
        )
    hb = timeout / HEARTBEATS_PER_TIMEOUT if heartbeat_s is None else heartbeat_s
    if not (hb > 0 and timeout >= 3 * hb):
        raise ConfigError(
            f"lock heartbeat {hb!r} s does not fit 3 times in the {timeout:g} s lock timeout; "
            f"leave the heartbeat unset (timeout/{HEARTBEATS_PER_TIMEOUT})"
        )
    return hb


def held_lock(run_dir: str | Path) -> RunLock | None:
    """The lock this process holds on run_dir, or None."""
    return _HELD.get(os.path.abspath(run_dir))


def _pid_alive(pid: int) -> bool:
    """True if pid is a live (non-zombie) process on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed but unreaped child still answers kill(0): read its state on Linux
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def lock_info(run_dir: str | Path) -> dict | None:
    """Contents of a run's lock file (pid, host, token, started, heartbeat), or None."""
    p = Path(run_dir) / LOCK_NAME
    try:
        info = json.loads(p.read_text())
        # The heartbeat thread touches the file's mtime (never rewrites it, so it cannot
        # clobber a lock another worker took over); the later of the two stamps counts.
        info["heartbeat"] = max(_num(info.get("heartbeat")), p.stat().st_mtime)
        return info
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        # A lock being written right now (create then write) reads as empty; report it as
        # held with an unknown owner and let its file age decide staleness.
        try:
            return {"pid": None, "host": None, "token": None, "heartbeat": p.stat().st_mtime}
        except FileNotFoundError:
            return None


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


def lock_is_stale(info: dict, timeout: float, *, now: float | None = None) -> bool:
    """A lock is stale if its holder is a dead pid on this host or its heartbeat is too old."""
    now = time.time() if now is None else now
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        if not _pid_alive(info["pid"]):
            return True
    hb = info.get("heartbeat")
    return not isinstance(hb, (int, float)) or now - hb > timeout


class RunLock:
    """An exclusive claim on one run directory, kept fresh by a heartbeat thread.

    Created with O_CREAT|O_EXCL so exactly one worker on a shared POSIX directory wins; a
    stale lock (dead pid on this host, or heartbeat older than `timeout` s) is recovered.
    Use `RunLock.acquire(run_dir)`, which returns None if another live worker holds it. If the
    heartbeat lapses past the timeout another worker may take the run over: `lost` turns True
    at the next heartbeat, `verify()` checks now, and `check()` raises LockLost.
    """

    def __init__(self, run_dir: Path, token: str, heartbeat_s: float) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        self.token = token
        self.lost = False
        self._info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "token": token,
            "started": time.time(),
            "heartbeat": time.time(),
        }
        self._stop = threading.Event()
        self.heartbeat_s = heartbeat_s
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(
        cls,
        run_dir: str | Path,
        *,
        timeout: float = DEFAULT_LOCK_TIMEOUT_S,
        heartbeat_s: float | None = None,
    ) -> RunLock | None:
        """Claim run_dir, recovering a stale lock; None if a live worker holds it. The heartbeat
        defaults to timeout/10; ConfigError for a timeout that is unsafe (see heartbeat_for)."""
        heartbeat_s = heartbeat_for(timeout, heartbeat_s)
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = cls(run_dir, uuid.uuid4().hex, heartbeat_s)
        for _ in range(3):
            if lock._create():
                _HELD[os.path.abspath(run_dir)] = lock
                lock._start()
                return lock
            info = lock_info(run_dir)
            if info is None:
                continue  # released between our create and read: try again
            if not lock_is_stale(info, timeout):
                return None
            _recover(run_dir, info, timeout)
        return None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._info, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._beat, daemon=True, name="jaxscale-lock")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s) and not self.lost:
            self.heartbeat()

    def heartbeat(self) -> None:
        """Refresh the timestamp, unless another worker has taken the lock over."""
        if self.lost:
            return  # never touch a lock file that now belongs to another worker
        info = lock_info(self.run_dir)
        if info is None or info.get("token") != self.token:
            self.lost = True
            return
        now = time.time()
        try:
            os.utime(self.path, (now, now))
        except FileNotFoundError:
            self.lost = True

    def verify(self) -> bool:
        """True if this worker still holds the lock (checked now, not at the last heartbeat)."""
        self.heartbeat()
        return not self.lost

    def check(self) -> None:
        """Raise LockLost if another worker has taken this run over."""
        if not self.verify():
            holder = lock_info(self.run_dir) or {}
            raise LockLost(
                f"{self.run_dir}: another worker ({holder.get('host')}:{holder.get('pid')}) took "
                f"this run's lock over after its heartbeat lapsed; this worker stops writing to it"
            )

    def release(self) -> None:
        """Stop the heartbeat and delete the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if _HELD.get(os.path.abspath(self.run_dir)) is self:
            del _HELD[os.path.abspath(self.run_dir)]
        info = lock_info(self.run_dir)
        if info is not None and info.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _recover(run_dir: Path, seen: dict, timeout: float) -> None:
    """Delete a stale lock under a short recovery mutex so two recoverers cannot both win."""
    mutex = run_dir / (LOCK_NAME + ".recover")
    try:
        fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:  # a recoverer that died inside this few-line window leaves the mutex behind
            if time.time() - mutex.stat().st_mtime > _RECOVER_STALE_S:
                mutex.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return
    os.close(fd)
    try:
        now = lock_info(run_dir)
        # Only remove the very lock we judged stale (same owner token), still stale.
        if now is not None and now.get("token") == seen.get("token"):
            if lock_is_stale(now, timeout):
                warnings.warn(
                    f"{run_dir.name}: recovering stale lock of pid {now.get('pid')} on "
                    f"{now.get('host')} (heartbeat {_age(now)} ago)",
                    stacklevel=3,
                )
                (run_dir / LOCK_NAME).unlink(missing_ok=True)
    finally:
        mutex.unlink(missing_ok=True)


def _age(info: dict) -> str:
    hb = info.get("heartbeat")
    return f"{time.time() - hb:.0f} s" if isinstance(hb, (int, float)) else "unknown"
