"""Evaluate a run's latest checkpoint on several eval sets (mean and per-position loss).

`evaluate_run` restores the newest readable checkpoint, evaluates it on more batches than
training did, and writes the run's eval.json (atomically) with, per set, the mean loss and the
loss at every context position. Analyses (jaxscale.analysis.position, jaxscale.analysis.shift)
read those files.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np

from jaxscale.config import RunConfig
from jaxscale.core import checkpoint, data, train

DEFAULT_SETS = ("stdlib",)
MIN_EVAL_SEQUENCES = 2048  # per-position means need thousands of windows to resolve L(t)


class EvalFiles(Protocol):
    """What evaluation reads and writes in one run's directory (jaxscale.runs.rundir.RunDir)."""

    @property
    def path(self) -> Any: ...

    @property
    def checkpoint_dir(self) -> Path: ...

    def has_checkpoints(self) -> bool: ...

    def read_config(self) -> RunConfig: ...

    def read_eval(self) -> dict | None: ...

    def write_eval(self, result: dict) -> None: ...


def load_params(run: EvalFiles) -> tuple[RunConfig, train.Setup, dict, int]:
    """(cfg, Setup, params, step) of a run's newest readable checkpoint."""
    cfg = run.read_config()
    if not run.has_checkpoints():
        raise FileNotFoundError(
            f"{run.path} has no checkpoints; train it first (jaxscale train / sweep run)"
        )
    s = train.setup(cfg)
    mngr = checkpoint.manager(run.checkpoint_dir, cfg.train)
    try:
        state, step = checkpoint.restore_latest(mngr, s.state_abstract)
    finally:
        checkpoint.close(mngr)
    if state is None:
        raise FileNotFoundError(f"{run.path}: no readable checkpoint")
    return cfg, s, state["params"], int(step)


def eval_tokens(
    name: str, cfg: RunConfig, *, max_bytes: int | None = 2_000_000
) -> tuple[np.ndarray, dict]:
    """Token stream + description of eval set `name` (built-in name or a text path), tokenized
    with the run's tokenizer."""
    if name in data.EVAL_CORPORA:
        es = data.eval_corpus(name, cfg.data, max_bytes=max_bytes)
        return es.tokens, {"source": es.source, "fingerprint": es.fingerprint, "n_docs": es.n_docs}
    if not (Path(name).exists() or any(ch in name for ch in "*?") or ":" in name):
        raise ValueError(
            f"unknown eval set {name!r}: use one of {list(data.EVAL_CORPORA)} or a path to a "
            "text file / directory / glob (or tokens:PATH, hf:NAME)"
        )
    tok = cfg.data.tokenizer
    if tok != "byte" and tok.partition(":")[2].isdigit():
        tok = data.load_corpus(cfg.data).tokenizer  # the BPE vocabulary the run trained with
    dc = dataclasses.replace(cfg.data, corpus=name, tokenizer=tok, max_bytes=max_bytes)
    c = data.load_corpus(dc)
    # A user's eval set is held out as a whole: both of load_corpus's splits are evaluated.
    tokens = np.concatenate([np.asarray(c.train), np.asarray(c.val)])
    return tokens, {
        "source": c.source,
        "fingerprint": c.fingerprint,
        "n_docs": c.n_docs_train + c.n_docs_val,
    }


def evaluate_run(
    run: EvalFiles,
    sets: Sequence[str] = DEFAULT_SETS,
    *,
    n_batches: int | None = None,
    batch_size: int | None = None,
    max_bytes: int | None = 2_000_000,
    force: bool = False,
    seed: int = 1234,
) -> dict:
    """Evaluate a run's latest checkpoint on each set; merge into, write and return its eval.json."""
    prev = run.read_eval() or {}
    cfg, s, params, step = load_params(run)
    B = batch_size or cfg.train.batch_size
    div = int(np.prod([s.mesh.shape[a] for a in s.mesh.axis_names if a in ("data", "fsdp")]))
    if B % div:
        raise ValueError(f"--batch-size {B} is not divisible by the data x fsdp mesh size {div}")
    L = cfg.model.context_length
    n_batches = n_batches or max(2, -(-MIN_EVAL_SEQUENCES // B))
    out_sets = dict(prev.get("sets", {})) if prev.get("step") == step else {}
    for name in sets:
        old = out_sets.get(name)
        if (
            old
            and not force
            and old.get("n_batches", 0) >= n_batches
            and old.get("batch_size") == B
        ):
            continue
        tokens, desc = eval_tokens(name, cfg, max_bytes=max_bytes)
        wins = data.eval_batches(tokens, batch_size=B, seq_len=L, n_batches=n_batches, seed=seed)
        if wins.max() >= cfg.model.vocab_size:
            raise ValueError(
                f"eval set {name!r} has token ids up to {int(wins.max())} but the model's vocab "
                f"is {cfg.model.vocab_size}; it was tokenized with a different tokenizer"
            )
        with jax.set_mesh(s.mesh):
            outs = []
            for w in wins:
                arr = jax.make_array_from_callback(w.shape, s.eval_sharding, lambda i, w=w: w[i])
                outs.append(s.eval_fn(params, arr))
            outs = jax.device_get(outs)
        pos_BxT = np.stack([np.asarray(o["loss_by_pos"], float) for o in outs])
        by_pos = pos_BxT.mean(0)
        pos_se = pos_BxT.std(0, ddof=1) / math.sqrt(len(outs))
        per_batch = np.array([float(o["loss"]) for o in outs])
        out_sets[name] = {
            **desc,
            "loss": float(per_batch.mean()),
            # Batches are stratified windows, so their spread gives an honest standard error.
            "loss_se": float(per_batch.std(ddof=1) / math.sqrt(len(per_batch)))
            if len(per_batch) > 1
            else math.nan,
            "loss_by_pos": [float(x) for x in by_pos],
            "loss_by_pos_se": [float(x) for x in pos_se],
            "n_batches": int(n_batches),
            "batch_size": int(B),
            "n_eval_tokens": int(n_batches * B * L),
        }
    result = {
        "run_id": cfg.run_id(),
        "name": cfg.name,
        "step": step,
        "tokens": step * cfg.tokens_per_step,
        "n_params_nonembedding": cfg.model.n_params_nonembedding,
        "n_params": cfg.model.n_params,
        "context_length": L,
        "sets": out_sets,
    }
    if jax.process_index() == 0:
        run.write_eval(result)
    return result
