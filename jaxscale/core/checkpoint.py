"""Checkpoints of a training state: orbax manager, save, and a restore that keeps good state.

A checkpoint holds two items: `state` (the device train state) and `host` (JSON: host-side
state that a logged column depends on, e.g. the gradient-noise-scale EMA). Restoring tells
three failures apart (docs/faults.md):

- a transient read error (EIO and the like) is retried with backoff, then fails loudly;
- a checkpoint of another shape than the config is a refusal (ConfigError), not corruption;
- a decode failure marks that step corrupt; it is moved to the quarantine directory only once
  an older checkpoint restores, and if none does nothing is moved and the restore fails.

orbax is imported inside each function: it is heavy, and the CLI must start fast.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxscale.config import ConfigError, TrainConfig

State = dict[str, Any]

# Read errors worth retrying: a flaky disk or network filesystem, not a bad file.
TRANSIENT_ERRNOS = frozenset(
    {errno.EIO, errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT, errno.ESTALE}
)
RETRIES = 4
BACKOFF_S = 0.5  # doubled after each failed attempt: 0.5 + 1 + 2 s before giving up
# tensorstore reports storage failures as ValueError("STATUS: ... [os_error_code='N'] ...").
_TS_ERRNO = re.compile(r"os_error_code='?(\d+)")
_TS_TRANSIENT = ("UNAVAILABLE:", "DEADLINE_EXCEEDED:", "ABORTED:")


class DiskFull(OSError):
    """A write ran out of space (ENOSPC); the one-line message names what and where."""

    def __init__(self, what: str, where: Any, detail: str = "No space left on device") -> None:
        super().__init__(
            errno.ENOSPC,
            f"disk full ({detail}) writing {what} to {where}; free space there, then rerun "
            f"the same command to resume from the last checkpoint",
        )


class CheckpointError(ValueError):
    """No checkpoint of a run restores; the message names each one and the way out."""


@dataclass(frozen=True)
class Restored:
    """A restored checkpoint: device state, host-side JSON state, and its step."""

    state: State
    host: dict
    step: int


def is_disk_full(e: BaseException | None) -> bool:
    """True if e, or an exception it was raised from, is a write that ran out of space."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        m = _TS_ERRNO.search(str(e))
        if (m and int(m.group(1)) == errno.ENOSPC) or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


class _QuietDiskFull(logging.Filter):
    """Drop orbax's logged tracebacks of a disk-full save (hundreds of lines each): `save` and
    `close` raise it as one DiskFull line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (is_disk_full(exc) or "No space left on device" in record.getMessage())


_QUIET = _QuietDiskFull()


def manager(checkpoint_dir: Path, tc: TrainConfig) -> Any:
    """An orbax CheckpointManager on checkpoint_dir keeping tc.keep_checkpoints (async saves)."""
    import orbax.checkpoint as ocp

    for name in ("absl", "asyncio"):  # orbax's own log, and its unawaited write tasks
        log = logging.getLogger(name)
        if _QUIET not in log.filters:
            log.addFilter(_QUIET)
    keep: dict[str, Any] = {"max_to_keep": tc.keep_checkpoints}
    if tc.branch_points:
        # A trunk keeps its branch points whatever keep_checkpoints prunes: its branches start
        # from them, possibly long after the trunk finished.
        policies = ocp.checkpoint_managers
        keep = {
            "preservation_policy": policies.AnyPreservationPolicy(
                [policies.LatestN(n=tc.keep_checkpoints), policies.CustomSteps(tc.branch_points)]
            )
        }
    opts = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=True, **keep)
    # Named handlers let a fresh manager read a checkpoint's metadata (the shape check).
    handlers = {"state": ocp.StandardCheckpointHandler(), "host": ocp.JsonCheckpointHandler()}
    # orbax needs an absolute path (relative ones fail inside its OCDBT layer).
    return ocp.CheckpointManager(
        Path(checkpoint_dir).absolute(), options=opts, item_handlers=handlers
    )


def close(mngr: Any) -> None:
    """Wait for in-flight async saves, then release the manager; DiskFull if a save ran out
    of space."""
    try:
        mngr.wait_until_finished()
        mngr.close()
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise DiskFull("checkpoints", mngr.directory) from None


def save(mngr: Any, step: int, state: State, host: dict | None = None) -> None:
    """Start an async save of state and the host-side JSON `host` as checkpoint `step`;
    DiskFull if the disk cannot hold it, or if an earlier save still finishing ran out of
    space."""
    import orbax.checkpoint as ocp

    # Refuse up front what cannot fit: a save failing in orbax's background threads is
    # reported late and leaves their noise on stderr. Uncompressed size, this process's share.
    need = sum(x.nbytes for x in jax.tree.leaves(state)) / jax.process_count()
    free = shutil.disk_usage(Path(mngr.directory)).free
    if need > free:
        raise DiskFull(
            f"checkpoint {step}", mngr.directory, f"it needs {_mib(need)}, {_mib(free)} free"
        )
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host or {})
    )
    try:
        mngr.save(step, args=args)
    except Exception as e:
        if not is_disk_full(e):
            raise
        # An async save fails at the next save or close: name the directory, not a step.
        raise DiskFull("checkpoints", mngr.directory) from None


def restore(mngr: Any, abstract: State, quarantine_dir: Path | None = None) -> Restored | None:
    """The newest checkpoint that restores, or None without checkpoints.

    ConfigError if a checkpoint has another shape than `abstract`; OSError once a transient read
    error outlasts the retries; CheckpointError if every checkpoint fails to decode. Corrupt
    steps newer than the restored one are moved to quarantine_dir (when given) so a later save
    of the same step cannot collide; nothing is moved unless an older checkpoint restores.
    """
    corrupt: list[tuple[int, str]] = []
    for step in sorted(mngr.all_steps(), reverse=True):
        _check_shapes(mngr, step, abstract)
        try:
            out = _read(mngr, step, abstract)
        except Exception as e:
            if _kind(e) != "corrupt":
                raise
            corrupt.append((step, _brief(e)))
            continue
        _set_aside(mngr, corrupt, out.step, quarantine_dir)
        return out
    if corrupt:
        listed = "; ".join(f"step {s}: {why}" for s, why in corrupt)
        raise CheckpointError(
            f"{mngr.directory}: no checkpoint restores ({listed}); nothing was moved: inspect "
            f"them, or move {mngr.directory} aside to train the run from scratch"
        )
    return None


def restore_step(checkpoint_dir: Path, step: int, abstract: State) -> Restored | None:
    """Checkpoint `step` of another run's directory, read-only (nothing there is pruned or
    moved), or None if it holds no such step; errors as in `restore`."""
    import orbax.checkpoint as ocp

    if not (Path(checkpoint_dir) / str(step)).is_dir():
        return None
    opts = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    handlers = {"state": ocp.StandardCheckpointHandler(), "host": ocp.JsonCheckpointHandler()}
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns that a read-only directory is read-only
    try:
        mngr = ocp.CheckpointManager(
            Path(checkpoint_dir).absolute(), options=opts, item_handlers=handlers
        )
    finally:
        absl.setLevel(level)
    try:
        if step not in mngr.all_steps():
            return None
        _check_shapes(mngr, step, abstract)
        return _read(mngr, step, abstract)
    finally:
        mngr.close()


def restore_latest(mngr: Any, abstract: State) -> tuple[State | None, int]:
    """(state, step) of the newest checkpoint that restores (see `restore`), or (None, 0)."""
    out = restore(mngr, abstract)
    return (None, 0) if out is None else (out.state, out.step)


def _kind(e: BaseException) -> str:
    """'transient' (retry), 'corrupt' (a decode failure of this checkpoint), or 'other'."""
    if isinstance(e, OSError):
        return "transient" if e.errno in TRANSIENT_ERRNOS else "other"
    if isinstance(e, (ValueError, KeyError)):
        m = _TS_ERRNO.search(str(e))
        if (m and int(m.group(1)) in TRANSIENT_ERRNOS) or str(e).startswith(_TS_TRANSIENT):
            return "transient"
        return "corrupt"
    return "other"


def _read(mngr: Any, step: int, abstract: State) -> Restored:
    """Restore one step, retrying transient read errors with exponential backoff."""
    import orbax.checkpoint as ocp

    items = {"state": ocp.args.StandardRestore(abstract)}
    # Checkpoints written before host state was saved have no host item.
    has_host = (Path(mngr.directory) / str(step) / "host").is_dir()
    if has_host:
        items["host"] = ocp.args.JsonRestore()
    attempt = 0
    while True:
        try:
            out = mngr.restore(step, args=ocp.args.Composite(**items))
            return Restored(out["state"], dict(out["host"]) if has_host else {}, step)
        except Exception as e:
            if _kind(e) != "transient":
                raise
            attempt += 1
            if attempt == RETRIES:
                code = e.errno if isinstance(e, OSError) and e.errno else errno.EIO
                raise OSError(
                    code,
                    f"checkpoint {step} in {mngr.directory} could not be read after {RETRIES} "
                    f"attempts ({_brief(e)}); nothing was moved: check the filesystem, then "
                    f"rerun the same command",
                ) from None
            delay = BACKOFF_S * 2 ** (attempt - 1)
            warnings.warn(
                f"checkpoint {step}: transient read error ({_brief(e)}); retrying in {delay:g} s",
                stacklevel=3,
            )
            time.sleep(delay)


def _check_shapes(mngr: Any, step: int, abstract: State) -> None:
    """ConfigError if checkpoint `step` holds arrays of other paths, shapes or dtypes than
    `abstract` (another model than the config); silent if its metadata cannot be read."""
    try:
        tree = mngr.item_metadata(step)["state"].tree
    except Exception:  # noqa: BLE001 - unreadable metadata: the restore judges the step
        return
    if not isinstance(tree, dict):
        return
    have, want = _layout(tree), _layout(abstract)
    if have == want:
        return
    diffs = [
        f"{p} {_fmt(have.get(p))} in the checkpoint, {_fmt(want.get(p))} in the config"
        for p in sorted(set(have) | set(want))
        if have.get(p) != want.get(p)
    ]
    more = f"; and {len(diffs) - 3} more" if len(diffs) > 3 else ""
    run = Path(mngr.directory).parent
    raise ConfigError(
        f"{run}: checkpoint {step} holds another model than this config "
        f"({'; '.join(diffs[:3])}{more}); train with the config the run was trained with, "
        f"or use another run directory"
    )


def _layout(tree: Any) -> dict[str, tuple]:
    """{'opt.1.mu.embed': (shape, dtype)} of an abstract state or a checkpoint's metadata."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        ".".join(_key(k) for k in path): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
        for path, leaf in flat
    }


def _key(k: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _fmt(layout: tuple | None) -> str:
    return "absent" if layout is None else f"{layout[1]}{list(layout[0])}"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _brief(e: BaseException) -> str:
    """The first line of an error, without tensorstore's spec dump."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text.split(" [tensorstore_spec")[0]
    return f"{type(e).__name__}: {text[:240]}"


def _set_aside(
    mngr: Any, corrupt: list[tuple[int, str]], restored: int, quarantine_dir: Path | None
) -> None:
    """Warn about the corrupt steps newer than `restored`; move them to quarantine_dir."""
    moved = False
    for step, why in corrupt:
        msg = f"checkpoint at step {step} is unreadable ({why})"
        if quarantine_dir is not None and jax.process_index() == 0:
            quarantine_dir.mkdir(parents=True, exist_ok=True)
            dest = quarantine_dir / f"{step}-{int(time.time())}"
            (Path(mngr.directory) / str(step)).rename(dest)
            msg += f"; moved to {dest}"
            moved = True
        warnings.warn(f"{msg}; resuming from step {restored}", stacklevel=3)
    if moved:
        mngr.reload()
