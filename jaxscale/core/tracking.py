"""Experiment tracking: hooks the training loop calls with each metrics row and eval.

metrics.jsonl stays the source of truth; hooks mirror its scalars into TensorBoard event files
(tensorboardX, always, in the run directory) and optionally into Weights & Biases. The loop
opens one hook per run on process 0 only, calls `log` for every recorded row and every eval,
and `close`s it when the session ends, however it ends.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary

from jaxscale.config import ConfigError, RunConfig

# metrics.jsonl column -> tag shown in TensorBoard / W&B.
TAGS = {
    "loss": "train/loss",
    "eval_loss": "eval/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "gns_b_simple": "train/gns_b_simple",
    "gns_b_simple_tokens": "train/gns_b_simple_tokens",
    "tokens_per_s": "perf/tokens_per_s",
    "mfu": "perf/mfu",
}
WANDB_MISSING = "wandb is not installed: pip install wandb"
FLUSH_S = 10.0  # seconds between event-file flushes


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The tracked scalars of a metrics row, by tag. Non-finite values are left out (tokens/s
    before its first measurement) except the training loss, so a divergence shows."""
    out = {}
    for col, tag in TAGS.items():
        v = row.get(col)
        if isinstance(v, (int, float)) and (math.isfinite(v) or col == "loss"):
            out[tag] = float(v)
    return out


class Hook(Protocol):
    """What the loop calls: `log` for each metrics row or eval, `close` once at the end."""

    def log(self, step: int, row: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class TensorBoardHook:
    """Event files in one run's directory, written in the caller's thread: a failed write (a full
    disk) raises in the loop instead of killing SummaryWriter's writer thread and then blocking
    the loop on its full queue. A resumed session hides the previous session's events past its
    checkpoint (a restart marker: SummaryWriter's purge_step), since the loop logs them again."""

    def __init__(self, logdir: str | os.PathLike, start: int) -> None:
        os.makedirs(logdir, exist_ok=True)
        # Unique per session: two sessions starting within one second would otherwise share
        # (and overwrite) the events.out.tfevents.<seconds>.<host> file.
        suffix = f".{os.getpid()}.{time.time_ns()}"
        self.events = EventsWriter(os.path.join(os.fspath(logdir), "events"), suffix)
        if start:
            restart = SessionLog(status=SessionLog.START)
            self.events.write_event(
                Event(step=start + 1, wall_time=time.time(), session_log=restart)
            )
        self.flushed = time.monotonic()

    def log(self, step: int, row: Mapping[str, Any]) -> None:
        # One event holding every scalar as simple_value: one summary.scalar event per tag cost
        # ~1.6 ms of a tiny run's per-step loop (BENCHMARKS.md, "What bounds the 1M step").
        values = [Summary.Value(tag=tag, simple_value=v) for tag, v in scalars(row).items()]
        self.events.write_event(
            Event(step=step, wall_time=time.time(), summary=Summary(value=values))
        )
        # A live TensorBoard sees new points within FLUSH_S; every step would fsync.
        if time.monotonic() - self.flushed > FLUSH_S:
            self.events.flush()
            self.flushed = time.monotonic()

    def close(self) -> None:
        self.events.close()


class WandbHook:
    """One W&B run per jaxscale run (its id is the run_id, so a resumed session continues it),
    holding the config and the latest manifest session; W&B keeps the first value it saw for a
    step, so steps logged again after a resume keep their earlier values there."""

    def __init__(self, project: str, cfg: RunConfig, session: Mapping[str, Any]) -> None:
        wandb = _import_wandb()
        self.run = wandb.init(
            project=project,
            id=cfg.run_id(),
            name=cfg.name,
            resume="allow",
            reinit="create_new",  # a vmapped group holds K runs open at once (wandb>=0.19.10)
            config={**cfg.to_dict(), "run_id": cfg.run_id(), "manifest": dict(session)},
        )

    def log(self, step: int, row: Mapping[str, Any]) -> None:
        self.run.log(scalars(row), step=step)

    def close(self) -> None:
        self.run.finish()


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ConfigError(WANDB_MISSING) from None
    return wandb


@dataclass(frozen=True)
class Tracking:
    """Where a training session mirrors its metrics besides metrics.jsonl. Not part of a run's
    config: tracking never changes a run_id."""

    tensorboard: bool = True
    wandb_project: str | None = None

    def __post_init__(self) -> None:
        if self.wandb_project is not None:
            if not self.wandb_project.strip():
                raise ConfigError("--wandb: the project name is empty; pass --wandb PROJECT")
            _import_wandb()  # refuse before any training, not after the first compile

    def open(
        self, cfg: RunConfig, tensorboard_dir: Path, start: int, sessions: Sequence[dict]
    ) -> list[Hook]:
        """The hooks of one run whose session starts after step `start`."""
        hooks: list[Hook] = []
        try:
            if self.tensorboard:
                hooks.append(TensorBoardHook(tensorboard_dir, start))
            if self.wandb_project is not None:
                hooks.append(WandbHook(self.wandb_project, cfg, sessions[-1] if sessions else {}))
        except BaseException:
            for h in hooks:  # a W&B login failure must not leave the event writer's thread
                h.close()
            raise
        return hooks
