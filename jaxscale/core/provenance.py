"""What a run was trained with: data fingerprint, package versions, code version, devices."""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import jax

from jaxscale.core.data import Corpus

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
        "versions": versions(),
        "git": git_state(),
        "host": socket.gethostname(),
        "platform": devs[0].platform,
        "device_kind": devs[0].device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
    }


def manifest(run_id: str, corpus: Corpus) -> dict[str, Any]:
    """The provenance record of one training session of run `run_id`."""
    return {
        "run_id": run_id,
        "data": data_identity(corpus),
        "environment": environment(),
        "time": time.time(),
    }
