"""Training: sharded state init, jitted AdamW step with donation, eval, metrics, checkpoints."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from jaxscale.config import ConfigError, RunConfig, TrainConfig
from jaxscale.config.axes import BATCH, LENGTH
from jaxscale.core import data as data_lib
from jaxscale.core import flops as flops_lib
from jaxscale.core import model as model_lib
from jaxscale.core import sharding as shd
from jaxscale.core.cache import enable_compilation_cache  # noqa: F401 - public re-export
from jaxscale.core.noise import NoiseScaleEMA
from jaxscale.runs import store

State = dict[str, Any]


def relative_schedule(tc: TrainConfig) -> optax.Schedule:
    """LR multiplier in [0, 1] per step: linear warmup, then cosine / constant / WSD decay."""
    w, n, floor = tc.warmup_steps, tc.steps, tc.min_lr_ratio
    if tc.schedule == "cosine":
        # Cosine to min_lr_ratio (Loshchilov & Hutter 2017), as in Hoffmann et al. 2022.
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, w, max(n, w + 1), end_value=floor)
    warm = optax.linear_schedule(0.0, 1.0, max(w, 1))
    if tc.schedule == "constant":
        return optax.join_schedules([warm, optax.constant_schedule(1.0)], [w])
    # Warmup-stable-decay (Hu et al. 2024, MiniCPM): linear decay over the last fraction.
    n_decay = max(1, int(round(tc.decay_fraction * n)))
    start = max(w, n - n_decay)
    decay = optax.linear_schedule(1.0, floor, n - start)
    return optax.join_schedules([warm, optax.constant_schedule(1.0), decay], [w, start])


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019) with clipping; the peak LR is applied in the step so
    models that differ only in LR can share one vmapped step."""

    def decay_mask(params):
        return jax.tree.map(lambda p: p.ndim >= 2, params)  # no decay on norm scales

    parts = [optax.clip_by_global_norm(tc.grad_clip)] if tc.grad_clip > 0 else []
    parts += [
        optax.scale_by_adam(b1=tc.beta1, b2=tc.beta2, eps=tc.eps),
        optax.add_decayed_weights(tc.weight_decay, mask=decay_mask),
        optax.scale_by_schedule(relative_schedule(tc)),
    ]
    return optax.chain(*parts)


@dataclass(frozen=True)
class Setup:
    """Everything compiled for one run shape: mesh, model split, shardings, jitted fns."""

    cfg: RunConfig
    mesh: jax.sharding.Mesh
    graphdef: Any
    abstract: Any
    state_shardings: Any
    batch_sharding: jax.sharding.NamedSharding
    eval_sharding: jax.sharding.NamedSharding
    init_fn: Callable[[], State]
    step_fn: Callable[[State, jax.Array], tuple[State, dict]]
    eval_fn: Callable[[dict, jax.Array], dict]


def _loss_terms(graphdef, abstract, params: dict, tokens_BxL1: jax.Array) -> jax.Array:
    """Per-token cross-entropy [B, L] of next-token prediction."""
    logits_BxLxV = model_lib.apply(graphdef, abstract, params, tokens_BxL1[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, tokens_BxL1[:, 1:])


def _sq_norm(tree) -> jax.Array:
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


def build_step(cfg: RunConfig, graphdef, abstract, tx: optax.GradientTransformation):
    """Pure train step (state, batch[A, B/A, L+1]) -> (state, metrics); vmappable over models."""
    A = cfg.train.grad_accum
    sched = relative_schedule(cfg.train)
    gns = cfg.train.gns

    def loss_fn(params, tokens):
        return jnp.mean(_loss_terms(graphdef, abstract, params, tokens))

    grad_fn = jax.value_and_grad(loss_fn)

    def step(state: State, batch_AxBxL1: jax.Array) -> tuple[State, dict]:
        params = state["params"]
        if A == 1:
            loss, grads = grad_fn(params, batch_AxBxL1[0])
            small_sq = jnp.zeros((), jnp.float32)
        else:
            # Accumulate microbatch gradients; their squared norms give |G_small|^2 for free.
            def body(carry, mb):
                g_acc, l_acc, sq_acc = carry
                l, g = grad_fn(params, mb)
                sq = _sq_norm(g) if gns else jnp.zeros((), jnp.float32)
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, sq_acc + sq), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
            (grads, loss, small_sq), _ = jax.lax.scan(body, init, batch_AxBxL1)
            grads = jax.tree.map(lambda g: g / A, grads)
            loss, small_sq = loss / A, small_sq / A
        grad_norm = optax.tree.norm(grads)
        updates, opt = tx.update(grads, state["opt"], params)
        lr = state["lr"] * sched(state["step"])
        params = jax.tree.map(lambda p, u: (p - lr * u).astype(p.dtype), params, updates)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr}
        if gns:
            metrics["g_small_sq"] = small_sq
            metrics["g_big_sq"] = jnp.square(grad_norm)
        new = {"params": params, "opt": opt, "step": state["step"] + 1, "lr": state["lr"]}
        return new, metrics

    return step


def build_eval(cfg: RunConfig, graphdef, abstract):
    """Eval fn: mean loss and per-position mean loss over a batch [B, L+1]."""

    def eval_fn(params: dict, tokens_BxL1: jax.Array) -> dict:
        loss_BxL = _loss_terms(graphdef, abstract, params, tokens_BxL1)
        return {"loss": jnp.mean(loss_BxL), "loss_by_pos": jnp.mean(loss_BxL, axis=0)}

    return eval_fn


def _opt_shardings(opt_abstract, params_sh: dict, replicated):
    """Shard optimizer leaves like the parameter whose key path they end with."""
    by_path = {
        tuple(str(k) for k in p): s for p, s in jax.tree_util.tree_flatten_with_path(params_sh)[0]
    }

    def one(path, leaf):
        keys = tuple(str(k) for k in path)
        for i in range(len(keys)):
            if keys[i:] in by_path and leaf.ndim > 0:
                return by_path[keys[i:]]
        return replicated

    return jax.tree_util.tree_map_with_path(one, opt_abstract)


def setup(cfg: RunConfig, mesh: jax.sharding.Mesh | None = None) -> Setup:
    """Mesh, shardings and jitted init/step/eval for a run config."""
    mesh = mesh if mesh is not None else shd.make_mesh(cfg.mesh)
    mc, tc = cfg.model, cfg.train
    div = shd.batch_divisor(mesh)
    micro = tc.batch_size // tc.grad_accum
    if micro % div:
        raise ConfigError(
            f"TrainConfig.batch_size: microbatch {micro} (= batch_size {tc.batch_size} / "
            f"grad_accum {tc.grad_accum}) is not divisible by the data x fsdp mesh size {div}"
        )
    graphdef, abstract = jax.eval_shape(lambda: model_lib.init_state(mc, 0))
    params_abs = nnx.to_pure_dict(abstract)
    params_sh = shd.tree_shardings(mesh, model_lib.logical_axes(abstract), params_abs)
    tx = make_optimizer(tc)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    opt_sh = _opt_shardings(jax.eval_shape(tx.init, params_abs), params_sh, replicated)
    state_sh = {"params": params_sh, "opt": opt_sh, "step": replicated, "lr": replicated}
    batch_sh = jax.sharding.NamedSharding(mesh, shd.logical_to_spec((None, BATCH, LENGTH), mesh))

    def init() -> State:
        _, st = model_lib.init_state(mc, tc.seed)
        params = nnx.to_pure_dict(st)
        return {
            "params": params,
            "opt": tx.init(params),
            "step": jnp.zeros((), jnp.int32),
            "lr": jnp.asarray(tc.lr, jnp.float32),
        }

    step = build_step(cfg, graphdef, abstract, tx)
    eval_fn = build_eval(cfg, graphdef, abstract)
    eval_in = jax.sharding.NamedSharding(mesh, shd.logical_to_spec((BATCH, LENGTH), mesh))
    return Setup(
        cfg=cfg,
        mesh=mesh,
        graphdef=graphdef,
        abstract=abstract,
        state_shardings=state_sh,
        batch_sharding=batch_sh,
        eval_sharding=eval_in,
        init_fn=jax.jit(init, out_shardings=state_sh),
        step_fn=jax.jit(
            step,
            in_shardings=(state_sh, batch_sh),
            out_shardings=(state_sh, replicated),
            donate_argnums=0,
        ),
        eval_fn=jax.jit(eval_fn, in_shardings=(params_sh, eval_in), out_shardings=replicated),
    )


def lower_step(cfg: RunConfig, mesh: jax.sharding.Mesh | None = None) -> jax.stages.Lowered:
    """The exact jitted train step, lowered for one global batch (for XLA cost analysis)."""
    s = setup(cfg, mesh)
    tc, mc = cfg.train, cfg.model
    state_abs = jax.eval_shape(s.init_fn)
    batch_abs = jax.ShapeDtypeStruct(
        (tc.grad_accum, tc.batch_size // tc.grad_accum, mc.context_length + 1),
        jnp.int32,
        sharding=s.batch_sharding,
    )
    with jax.set_mesh(s.mesh):
        return s.step_fn.lower(state_abs, batch_abs)


def counting_config(run: RunConfig) -> RunConfig:
    """The same step unrolled for cost_analysis: layers not scanned, one microbatch."""
    return run.replace(**{"model.scan_layers": False, "train.grad_accum": 1, "model.remat": "none"})


def xla_train_step_flops(run: RunConfig) -> float:
    """Global FLOPs of one compiled train step as XLA counts them (the real step, unrolled)."""
    return flops_lib.xla_flops(lower_step(counting_config(run)).compile())


def _device_batch(s: Setup, local_BxL1: np.ndarray) -> jax.Array:
    """Global [A, B/A, L+1] array from this process's rows of the global batch."""
    A = s.cfg.train.grad_accum
    local = local_BxL1.reshape(A, local_BxL1.shape[0] // A, local_BxL1.shape[1])
    shape = (A, s.cfg.train.batch_size // A, local_BxL1.shape[1])
    return jax.make_array_from_process_local_data(s.batch_sharding, local, shape)


class _Preemption:
    """SIGTERM sets a flag the loop polls, so a checkpoint is written before exiting."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _checkpoint_manager(run_dir: Path, tc: TrainConfig):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(
        max_to_keep=tc.keep_checkpoints, create=True, enable_async_checkpointing=True
    )
    # orbax needs an absolute path (relative ones fail inside its OCDBT layer).
    return ocp.CheckpointManager((run_dir / "checkpoints").absolute(), options=opts)


def _restore_latest(
    mngr, abstract_state: State, quarantine: Path | None = None
) -> tuple[State | None, int]:
    """Restore the newest readable checkpoint; unreadable ones are skipped with a warning and,
    given a quarantine dir, moved there so a later save of the same step cannot collide."""
    import orbax.checkpoint as ocp

    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            out = mngr.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            )
            return out["state"], step
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped
            msg = f"checkpoint at step {step} is unreadable ({type(e).__name__}: {e})"
            if quarantine is not None and jax.process_index() == 0:
                quarantine.mkdir(parents=True, exist_ok=True)
                dest = quarantine / f"{step}-{int(time.time())}"
                (Path(mngr.directory) / str(step)).rename(dest)
                msg += f"; moved to {dest}"
                mngr.reload()
            warnings.warn(msg + "; trying an older one", stacklevel=2)
    return None, 0


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Unique per process: hosts sharing a run directory must not delete each other's probe.
        probe = run_dir / f".write_probe.{socket.gethostname()}.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink(missing_ok=True)
    except OSError as e:
        raise ConfigError(f"run directory {str(run_dir)!r} is not writable: {e}") from None


def _summary_base(cfg: RunConfig) -> dict:
    mc = cfg.model
    return {
        "run_id": cfg.run_id(),
        "name": cfg.name,
        "n_params": mc.n_params,
        "n_params_nonembedding": mc.n_params_nonembedding,
        "n_params_embedding": mc.n_params_embedding,
        "tokens_per_step": cfg.tokens_per_step,
        "planned_steps": cfg.train.steps,
    }


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    corpus: data_lib.Corpus | None = None,
) -> dict:
    """Train one run in run_dir, resuming from its latest checkpoint; returns the summary."""
    run_dir = Path(run_dir)
    _check_writable(run_dir)
    shd.maybe_initialize_distributed(cfg.mesh)
    mc = cfg.model
    corpus = corpus if corpus is not None else data_lib.load_corpus(cfg.data)
    if corpus.vocab_size > mc.vocab_size:
        raise ConfigError(
            f"ModelConfig.vocab_size={mc.vocab_size} is smaller than the tokenizer's "
            f"{corpus.vocab_size}; set model.vocab_size={corpus.vocab_size}"
        )
    data_lib.warn_if_repeated(corpus, cfg.total_tokens)
    s = setup(cfg, mesh)
    is_main = jax.process_index() == 0
    if is_main:
        store.write_json_atomic(run_dir / "config.json", {**cfg.to_dict(), "run_id": cfg.run_id()})
    with jax.set_mesh(s.mesh):
        return _train_loop(cfg, s, run_dir, corpus, progress and is_main, is_main)


def _train_loop(cfg, s: Setup, run_dir: Path, corpus, progress: bool, is_main: bool) -> dict:
    tc, mc = cfg.train, cfg.model
    mngr = _checkpoint_manager(run_dir, tc)
    abstract_state = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
        jax.eval_shape(s.init_fn),
        s.state_shardings,
    )
    state, start = _restore_latest(mngr, abstract_state, run_dir / "corrupt_checkpoints")
    if state is None:
        state, start = s.init_fn(), 0
    metrics_path = run_dir / "metrics.jsonl"
    if is_main:
        store.truncate_jsonl_after(metrics_path, start)
    done_rows = store.read_jsonl(metrics_path) if start else []
    fpt = flops_lib.flops_per_token(mc, "kaplan_attn")
    # MFU counts what the model needs, PaLM-style (full attention, no remat recompute).
    fpt_mfu = flops_lib.flops_per_token(mc, "exact")
    peak, _ = flops_lib.device_peak_flops(mc.compute_dtype)
    n_dev = jax.device_count()
    val = data_lib.eval_batches(
        corpus.val, batch_size=tc.batch_size, seq_len=mc.context_length, n_batches=tc.eval_batches
    )
    # Every process holds the full eval set, so a callback places each shard (multi-host safe).
    val_dev = [
        jax.make_array_from_callback(v.shape, s.eval_sharding, lambda idx, v=v: v[idx]) for v in val
    ]
    pi, pc = jax.process_index(), jax.process_count()
    batches = data_lib.Prefetcher(
        corpus.train,
        seed=tc.seed,
        start=start,
        end=tc.steps,
        batch_size=tc.batch_size,
        seq_len=mc.context_length,
        shard_index=pi,
        num_shards=pc,
    )
    micro = tc.batch_size // tc.grad_accum
    gns = NoiseScaleEMA(micro, tc.batch_size, tc.gns_ema) if tc.gns else None
    bar = _progress_bar(progress, start, tc.steps, cfg.name)
    rows: list[dict] = []
    pending: list[tuple[int, dict]] = []
    status, last_loss, last_eval = "running", math.nan, math.nan
    # A resumed run carries its latest logged losses, so a run resumed at its end reports them.
    for r in done_rows:
        last_loss = r.get("loss", last_loss)
        last_eval = r.get("eval_loss", last_eval)
    t_last, tok_last = time.perf_counter(), start * cfg.tokens_per_step
    t0 = time.perf_counter()
    tps = math.nan
    diverged_at = 0

    def drain(keep: int) -> bool:
        """Read metrics of finished steps (a step late, so the host never stalls the device)."""
        nonlocal last_loss, status, diverged_at
        while len(pending) > keep:
            step_no, m = pending.pop(0)
            m = jax.device_get(m)
            row = {
                "step": step_no,
                "tokens": step_no * cfg.tokens_per_step,
                "flops": step_no * cfg.tokens_per_step * fpt,
                "loss": float(m["loss"]),
                "lr": float(m["lr"]),
                "grad_norm": float(m["grad_norm"]),
                "tokens_per_s": tps,
                "mfu": tps * fpt_mfu / (peak * n_dev) if peak else math.nan,
                "time": time.time(),
            }
            if gns is not None:
                b = gns.update(float(m["g_small_sq"]), float(m["g_big_sq"]))
                row["gns_b_simple"] = b
                row["gns_b_simple_tokens"] = b * mc.context_length
            rows.append(row)
            if not math.isfinite(row["loss"]):
                status, diverged_at = "diverged", step_no
                return False
            last_loss = row["loss"]
        return True

    def evaluate(step_no: int) -> float:
        outs = [s.eval_fn(state["params"], v) for v in val_dev]
        losses = jax.device_get(outs)
        value = float(np.mean([o["loss"] for o in losses]))
        by_pos = np.mean([o["loss_by_pos"] for o in losses], axis=0)
        for r in reversed(rows):
            if r["step"] == step_no:
                r["eval_loss"] = value
                if step_no == tc.steps:
                    r["eval_loss_by_pos"] = [round(float(x), 5) for x in by_pos]
                break
        return value

    def flush() -> None:
        if is_main:
            store.append_jsonl(metrics_path, rows)
        rows.clear()

    preempted = False
    with _Preemption() as pre, contextlib.closing(batches), _finishing(mngr):
        for step_no in range(start + 1, tc.steps + 1):
            batch = _device_batch(s, next(batches))
            state, m = s.step_fn(state, batch)
            pending.append((step_no, m))
            if not drain(keep=1):
                break
            at_eval = step_no % tc.eval_every == 0 or step_no == tc.steps
            at_ckpt = step_no % tc.checkpoint_every == 0 or step_no == tc.steps
            if at_eval or at_ckpt or pre.requested:
                if not drain(keep=0):
                    break
            if step_no % tc.log_every == 0 or at_eval:
                now = time.perf_counter()
                tok = step_no * cfg.tokens_per_step
                tps = (tok - tok_last) / max(now - t_last, 1e-9)
                t_last, tok_last = now, tok
            if at_eval:
                last_eval = evaluate(step_no)
            if at_ckpt or pre.requested:
                flush()
                mngr.save(step_no, args=_ckpt_args(state))
                if pre.requested:
                    preempted = step_no < tc.steps  # a SIGTERM on the last step still finished
                    break
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}", eval=f"{last_eval:.3f}", refresh=False)
        else:
            drain(keep=0)
    flush()
    if bar is not None:
        bar.close()
    if status != "diverged":
        status = "preempted" if preempted else "done"
    done = int(jax.device_get(state["step"])) if status != "diverged" else diverged_at
    wall = time.perf_counter() - t0
    tokens = done * cfg.tokens_per_step
    summary = {
        **_summary_base(cfg),
        "status": status,
        "steps": done,
        "tokens": tokens,
        "loss": last_eval,
        "train_loss": last_loss,
        "flops": {c: flops_lib.flops_per_token(mc, c) * tokens for c in flops_lib.CONVENTIONS},
        "wall_time_s": wall,
        "tokens_per_s": (tokens - start * cfg.tokens_per_step) / max(wall, 1e-9),
        "peak_flops_per_device": peak,
    }
    summary["mfu"] = summary["tokens_per_s"] * fpt_mfu / (peak * n_dev) if peak else math.nan
    if status == "diverged":
        summary["error"] = f"non-finite training loss at step {diverged_at}"
    if is_main:
        store.write_json_atomic(run_dir / "summary.json", summary)
    return summary


@contextlib.contextmanager
def _finishing(mngr):
    """Wait for in-flight async saves even when training raises (e.g. disk full)."""
    try:
        yield mngr
    finally:
        mngr.wait_until_finished()
        mngr.close()


def _ckpt_args(state: State):
    import orbax.checkpoint as ocp

    return ocp.args.Composite(state=ocp.args.StandardSave(state))


def _progress_bar(enabled: bool, start: int, total: int, name: str):
    if not enabled:
        return None

    return tqdm(total=total, initial=start, desc=name, unit="step", dynamic_ncols=True)
