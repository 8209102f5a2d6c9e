"""What a run was trained with: data fingerprint, package versions, code version, devices."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import jax

from jaxscale.core.data import Corpus

# What a config means to the training loop. Bump it when the same config trains differently, so
# a resume or an analysis never mixes the two (runs/rundir.py, runs/selection.py). History:
# 1 (unrecorded): before 2026-11-30 15:41 UTC (commit b38e776) the LR schedule was applied twice
#   (η·s(t)²) and the stacked per-layer norm gains were weight-decayed;
# 2: the schedule applied once, gains and biases never decayed;
# 3: the schedule is data of the compiled step (core/train.py: schedule_at), so runs of one shape
#   share one program: the same maths, but XLA rounds its float32 LR differently (<= 1e-6
#   relative), which chaotic training grows into different trajectories.
TRAINING_SEMANTICS = 3
# The commit that made semantics 2, for sessions recorded before the field existed: a checkout
# descending from it trained under 2 (asked of git where the checkout is at hand; uncommitted
# edits on top are taken not to undo the fix).
_SEMANTICS_2_COMMIT = "b38e776c9928e15e64af04401f86685b4e758761"

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpyro", "numpy", "jaxscale")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on, and Python's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(start: Path | None = None) -> dict[str, Any] | None:
    """Commit and dirty flag of the checkout holding jaxscale, or None outside a checkout."""
    root = start or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def data_identity(corpus: Corpus) -> dict[str, Any]:
    """What identifies the tokens a run trains on: the corpus fingerprint covers the exact file
    list and content hashes (or the token file's hash) and the tokenizer."""
    return {
        "fingerprint": corpus.fingerprint,
        "source": corpus.source,
        "tokenizer": corpus.tokenizer,
        "vocab_size": corpus.vocab_size,
        "n_docs_train": corpus.n_docs_train,
        "n_docs_val": corpus.n_docs_val,
        "source_fingerprint": corpus.meta.get("source_fingerprint"),
    }


def environment() -> dict[str, Any]:
    """Versions, code version, host and devices of this process."""
    devs = jax.devices()
    return {
        "training_semantics": TRAINING_SEMANTICS,
        "versions": versions(),
        "git": git_state(),
        "host": socket.gethostname(),
        "platform": devs[0].platform,
        "device_kind": devs[0].device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
    }


def semantics_label(semantics: int | None) -> str:
    """How a run's training semantics reads in messages."""
    return str(semantics) if semantics is not None else "unrecorded (trained before 2026-11-30)"


def semantics_of(sessions: list[dict]) -> int | None:
    """The training semantics the last session trained with; for a session that predates the
    record, 2 if its git commit descends from the fix (local edits aside), else None."""
    if not sessions:
        return None
    env = sessions[-1].get("environment") or {}
    got = env.get("training_semantics")
    if isinstance(got, int):
        return got
    git = env.get("git") or {}
    commit = git.get("commit")
    if isinstance(commit, str) and _descends_from_fix(commit):
        return 2
    return None


@functools.lru_cache(maxsize=256)
def _descends_from_fix(commit: str) -> bool:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "merge-base", "--is-ancestor", _SEMANTICS_2_COMMIT, commit],
            capture_output=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0
