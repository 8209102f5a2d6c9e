"""Checkpoints of a training state: orbax manager, save, restore of the newest readable step.

orbax is imported inside each function: it is heavy, and the CLI must start fast.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax

from jaxscale.config import TrainConfig

if TYPE_CHECKING:
    from jaxscale.core.train import Setup

State = dict[str, Any]


def manager(checkpoint_dir: Path, tc: TrainConfig) -> Any:
    """An orbax CheckpointManager on checkpoint_dir keeping tc.keep_checkpoints (async saves)."""
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(
        max_to_keep=tc.keep_checkpoints, create=True, enable_async_checkpointing=True
    )
    # orbax needs an absolute path (relative ones fail inside its OCDBT layer).
    return ocp.CheckpointManager(Path(checkpoint_dir).absolute(), options=opts)


def close(mngr: Any) -> None:
    """Wait for in-flight async saves, then release the manager."""
    mngr.wait_until_finished()
    mngr.close()


def save(mngr: Any, step: int, state: State) -> None:
    """Start an async save of state as checkpoint `step`."""
    import orbax.checkpoint as ocp

    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))


def abstract_state(s: Setup) -> State:
    """Shapes, dtypes and shardings of s's train state: the restore target of a checkpoint."""
    return jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
        jax.eval_shape(s.init_fn),
        s.state_shardings,
    )


def restore_latest(
    mngr: Any, abstract: State, quarantine_dir: Path | None = None
) -> tuple[State | None, int]:
    """Restore the newest readable checkpoint, or (None, 0); unreadable ones are skipped with a
    warning and, given a quarantine dir, moved there so a later save of the same step cannot
    collide."""
    import orbax.checkpoint as ocp

    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            out = mngr.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )
            return out["state"], step
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped
            msg = f"checkpoint at step {step} is unreadable ({type(e).__name__}: {e})"
            if quarantine_dir is not None and jax.process_index() == 0:
                quarantine_dir.mkdir(parents=True, exist_ok=True)
                dest = quarantine_dir / f"{step}-{int(time.time())}"
                (Path(mngr.directory) / str(step)).rename(dest)
                msg += f"; moved to {dest}"
                mngr.reload()
            warnings.warn(msg + "; trying an older one", stacklevel=2)
    return None, 0
