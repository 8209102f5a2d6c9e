"""Training: sharded state init, jitted AdamW step with donation, and one loop for K >= 1 models.

K = 1 is an ordinary (possibly multi-host) run; K > 1 same-shape runs that differ only in seed
and peak LR share one `vmap`ped step on one process. Every run's directory is written alike.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import functools
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from jaxscale.config import ConfigError, ModelConfig, RunConfig, TrainConfig
from jaxscale.config.axes import BATCH, LENGTH
from jaxscale.core import checkpoint, kernels, memory, mup, provenance
from jaxscale.core import data as data_lib
from jaxscale.core import flops as flops_lib
from jaxscale.core import model as model_lib
from jaxscale.core import sharding as shd
from jaxscale.core.noise import NoiseScaleEMA
from jaxscale.core.tracking import Hook, Tracking

State = dict[str, Any]


def step_numbers(tc: TrainConfig) -> np.ndarray:
    """The schedule and the weight decay as numbers [warmup, decay end, decay start, floor,
    cosine?, 1-sqrt?, λ]: passed to the compiled step as data, so runs of one shape share one
    program (and a vmapped group) whatever their length, schedule and weight decay."""
    w, n, floor, wd = tc.warmup_steps, tc.steps, tc.min_lr_ratio, tc.weight_decay
    if tc.schedule == "cosine":
        return np.array([w, max(n, w + 1), w, floor, 1.0, 0.0, wd], np.float32)
    # A constant schedule's decay starts after any step a run takes.
    start = 2.0**31 if tc.schedule == "constant" else tc.decay_start
    sqrt = float(tc.cooldown_shape == "1-sqrt")
    return np.array([w, n, start, floor, 0.0, sqrt, wd], np.float32)


def schedule_at(t: jax.Array, h_7: jax.Array) -> jax.Array:
    """LR multiplier in [0, 1] at update t: linear warmup, then cosine / constant / WSD."""
    t = jnp.asarray(t, jnp.float32)
    w, n, start, floor, is_cos, is_sqrt = (h_7[i] for i in range(6))
    warm = t / jnp.maximum(w, 1.0)
    # Cosine to min_lr_ratio (Loshchilov & Hutter 2017), as in Hoffmann et al. 2022.
    c = jnp.clip((t - w) / jnp.maximum(n - w, 1.0), 0.0, 1.0)
    cos = floor + (1.0 - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * c))
    # Warmup-stable-decay (Hu et al. 2024, MiniCPM): a decay over the last fraction, linear or
    # 1 - sqrt (Hägele et al. 2024 Sec. 3, better than linear in their Fig. 4) onto [floor, 1].
    x = jnp.clip((t - start) / jnp.maximum(n - start, 1.0), 0.0, 1.0)
    decay = jnp.where(is_sqrt > 0, 1.0 - jnp.sqrt(x), 1.0 - x)
    wsd = jnp.where(t < start, 1.0, floor + (1.0 - floor) * decay)
    return jnp.where(t < w, warm, jnp.where(is_cos > 0, cos, wsd))


def relative_schedule(tc: TrainConfig) -> Callable[[jax.Array], jax.Array]:
    """tc's LR multiplier per update t (schedule_at with tc's numbers)."""
    h_7 = jnp.asarray(step_numbers(tc))
    return lambda t: schedule_at(t, h_7)


def make_optimizer(
    tc: TrainConfig, mc: ModelConfig | None = None, weight_decay: jax.Array | None = None
) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019) with clipping; the peak LR is applied in the step so
    models that differ only in LR can share one vmapped step, and the step passes λ as data
    (weight_decay; tc's when None) for the same reason. Given mc, μP's per-parameter LR
    factors (core.mup.lr_multipliers) scale the Adam direction by parameter name (optax.partition)."""

    def decay_mask(params):
        # By name, not ndim: stacked per-layer norm scales are [L, D] (Loshchilov & Hutter 2019
        # decay weights, not norm gains or biases).
        return jax.tree_util.tree_map_with_path(
            lambda path, _: not str(getattr(path[-1], "key", "")).endswith(("_scale", "_bias")),
            params,
        )

    parts = [optax.clip_by_global_norm(tc.grad_clip)] if tc.grad_clip > 0 else []
    parts += [optax.scale_by_adam(b1=tc.beta1, b2=tc.beta2, eps=tc.eps)]
    mults = {n: m for n, m in mup.lr_multipliers(mc).items() if m != 1.0} if mc else {}
    if mults:

        def labels(params):
            def one(path, _):
                name = getattr(path[-1], "key", None)
                return name if name in mults else "rest"

            return jax.tree_util.tree_map_with_path(one, params)

        # Scaled before the decay, so the per-step decay η·λ stays width-independent: CompleteP
        # (Dey et al. 2025 Table 1) multiplies hidden λ by m_N under coupled AdamW to the same end.
        scales = {n: optax.scale(m) for n, m in mults.items()}
        parts += [optax.partition(scales | {"rest": optax.identity()}, labels)]
    # The step multiplies by peak LR × relative_schedule, so the schedule is applied once: the
    # per-step update is η_t·(Adam direction + λ·p), coupled AdamW as in PyTorch and optax.adamw.
    wd = tc.weight_decay if weight_decay is None else weight_decay
    parts += [optax.add_decayed_weights(wd, mask=decay_mask)]
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
    step_jit: Any  # the jitted step(state, batch, step numbers) behind step_fn
    numbers: jax.Array  # cfg's schedule and weight decay (step_numbers), on the devices
    state_abstract: State  # shapes, dtypes and shardings of the train state (restore target)


def loss_terms(graphdef, abstract, params: dict, tokens_BxL1: jax.Array) -> jax.Array:
    """Per-token cross-entropy [B, L] of next-token prediction."""
    logits_BxLxV = model_lib.apply(graphdef, abstract, params, tokens_BxL1[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, tokens_BxL1[:, 1:])


def _sq_norm(tree) -> jax.Array:
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


def build_step(cfg: RunConfig, graphdef, abstract):
    """Pure train step (state, batch[A, B/A, L+1], step numbers[7]) -> (state, metrics);
    vmappable over models."""
    A = cfg.train.grad_accum
    gns = cfg.train.gns

    def loss_fn(params, tokens):
        return jnp.mean(loss_terms(graphdef, abstract, params, tokens))

    grad_fn = jax.value_and_grad(loss_fn)

    def step(state: State, batch_AxBxL1: jax.Array, h_7: jax.Array) -> tuple[State, dict]:
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
        # λ is data: its transform has no state, so the optimizer state is make_optimizer(tc)'s.
        tx = make_optimizer(cfg.train, cfg.model, weight_decay=h_7[6])
        updates, opt = tx.update(grads, state["opt"], params)
        lr = state["lr"] * schedule_at(state["step"], h_7)
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
        loss_BxL = loss_terms(graphdef, abstract, params, tokens_BxL1)
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


# TrainConfig fields the compiled programs never see: the schedule and weight decay are data
# (step_numbers), seed and peak LR are arguments of init, the rest is the host loop's bookkeeping.
NOT_COMPILED = (
    "seed", "lr", "weight_decay", "lr_rule", "batch_rule", "steps", "schedule", "warmup_steps",
    "min_lr_ratio", "decay_fraction", "cooldown_shape", "eval_every", "eval_batches",
    "checkpoint_every", "keep_checkpoints", "log_every", "gns_ema", "branch_of", "branch_step",
    "branch_points",
)  # fmt: skip


def setup(cfg: RunConfig, mesh: jax.sharding.Mesh | None = None) -> Setup:
    """Mesh, shardings and jitted init/step/eval for a run config: the jitted functions are
    shared by every run of one program (_programs), so a sweep traces and compiles each shape
    once per process, whatever the runs' lengths, schedules, seeds and LRs."""
    mesh = mesh if mesh is not None else shd.make_mesh(cfg.mesh)
    p = _programs(_program_config(cfg), mesh, kernels.use_blocked_attention())
    tc = cfg.train
    seed, lr = np.int32(tc.seed), np.float32(tc.lr)
    numbers = jax.device_put(step_numbers(tc), p.replicated)
    return Setup(
        cfg=cfg,
        mesh=mesh,
        graphdef=p.graphdef,
        abstract=p.abstract,
        state_shardings=p.state_sh,
        batch_sharding=p.batch_sh,
        eval_sharding=p.eval_sh,
        init_fn=lambda: p.init_jit(seed, lr),
        step_fn=lambda state, batch: p.step_jit(state, batch, numbers),
        eval_fn=p.eval_jit,
        step_jit=p.step_jit,
        numbers=numbers,
        state_abstract=p.state_abstract,
    )


def _program_config(cfg: RunConfig) -> RunConfig:
    """cfg as its compiled programs see it: every NOT_COMPILED field at its default."""
    defaults = TrainConfig()
    train = dataclasses.replace(cfg.train, **{f: getattr(defaults, f) for f in NOT_COMPILED})
    return RunConfig(model=cfg.model, train=train, mesh=cfg.mesh)


@dataclass(frozen=True)
class _Programs:
    """The jitted functions and shardings of one program (setup's cache entry)."""

    graphdef: Any
    abstract: Any
    state_sh: State
    batch_sh: jax.sharding.NamedSharding
    eval_sh: jax.sharding.NamedSharding
    replicated: jax.sharding.NamedSharding
    state_abstract: State
    init: Callable[[jax.Array, jax.Array], State]  # (seed, peak LR) -> fresh state
    init_jit: Callable[[np.int32, np.float32], State]
    step_jit: Any
    eval_jit: Callable[[dict, jax.Array], dict]


@functools.lru_cache(maxsize=16)
def _programs(cfg: RunConfig, mesh: jax.sharding.Mesh, blocked_attention: bool) -> _Programs:
    """One program's pieces; keyed by the attention path too, which a benchmark may switch."""
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
    tx = make_optimizer(tc, mc)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    opt_sh = _opt_shardings(jax.eval_shape(tx.init, params_abs), params_sh, replicated)
    state_sh = {"params": params_sh, "opt": opt_sh, "step": replicated, "lr": replicated}
    batch_sh = jax.sharding.NamedSharding(mesh, shd.logical_to_spec((None, BATCH, LENGTH), mesh))

    def init(seed: jax.Array, lr: jax.Array) -> State:
        # jax.random.key(seed) is what nnx.Rngs builds from an int seed.
        _, st = model_lib.init_state(mc, jax.random.key(seed))
        params = nnx.to_pure_dict(st)
        return {
            "params": params,
            "opt": tx.init(params),
            "step": jnp.zeros((), jnp.int32),
            "lr": lr.astype(jnp.float32),
        }

    eval_sh = jax.sharding.NamedSharding(mesh, shd.logical_to_spec((BATCH, LENGTH), mesh))
    return _Programs(
        graphdef=graphdef,
        abstract=abstract,
        state_sh=state_sh,
        batch_sh=batch_sh,
        eval_sh=eval_sh,
        replicated=replicated,
        state_abstract=jax.tree.map(
            lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
            jax.eval_shape(init, jax.ShapeDtypeStruct((), jnp.int32), jnp.float32(0)),
            state_sh,
        ),
        init=init,
        init_jit=jax.jit(init, out_shardings=state_sh),
        step_jit=jax.jit(
            build_step(cfg, graphdef, abstract),
            in_shardings=(state_sh, batch_sh, replicated),
            out_shardings=(state_sh, replicated),
            donate_argnums=0,
        ),
        eval_jit=jax.jit(
            build_eval(cfg, graphdef, abstract),
            in_shardings=(params_sh, eval_sh),
            out_shardings=replicated,
        ),
    )


def lower_step(cfg: RunConfig, mesh: jax.sharding.Mesh | None = None) -> jax.stages.Lowered:
    """The exact jitted train step, lowered for one global batch (for XLA cost analysis)."""
    s = setup(cfg, mesh)
    tc, mc = cfg.train, cfg.model
    state_abs = s.state_abstract
    batch_abs = jax.ShapeDtypeStruct(
        (tc.grad_accum, tc.batch_size // tc.grad_accum, mc.context_length + 1),
        jnp.int32,
        sharding=s.batch_sharding,
    )
    with jax.set_mesh(s.mesh):
        return s.step_jit.lower(state_abs, batch_abs, s.numbers)


def counting_config(run: RunConfig) -> RunConfig:
    """The same step unrolled for cost_analysis: layers not scanned, one microbatch."""
    return run.replace(**{"model.scan_layers": False, "train.grad_accum": 1, "model.remat": "none"})


def xla_train_step_flops(run: RunConfig) -> float:
    """Global FLOPs of one compiled train step as XLA counts them (the real step, unrolled)."""
    return flops_lib.xla_flops(lower_step(counting_config(run)).compile())


# --- run directories --------------------------------------------------------------------------


class RunFiles(Protocol):
    """What the loop reads and writes in one run's directory (jaxscale.runs.rundir.RunDir).

    check_identity/claim raise a ConfigError (RunMismatch) if the directory holds another run;
    check_lock raises (store.LockLost) once another worker has taken the run over.
    """

    @property
    def path(self) -> Any: ...

    @property
    def checkpoint_dir(self) -> Path: ...

    @property
    def quarantine_dir(self) -> Path: ...

    @property
    def tensorboard_dir(self) -> Path: ...

    def check_writable(self) -> None: ...

    def check_identity(self, cfg: RunConfig, data: dict) -> str: ...

    def claim(self, cfg: RunConfig, data: dict) -> str: ...

    def check_lock(self) -> None: ...

    def read_metrics(self) -> list[dict]: ...

    def truncate_metrics(self, step: int) -> None: ...

    def append_metrics(self, rows: Sequence[dict]) -> None: ...

    def write_summary(self, summary: dict) -> None: ...

    def sessions(self) -> list[dict]: ...

    def trunk(self, run_id: str) -> RunFiles:
        """The files of trunk run `run_id` (a sibling in the same results), read by a branch."""
        ...


# --- K same-shape models ----------------------------------------------------------------------

# TrainConfig fields that may differ inside a group: they only change values, not shapes.
# branch_of/branch_step only say which trunk checkpoint a model starts from.
VARYING = ("seed", "lr", "weight_decay", "branch_of", "branch_step")


def _shape_key(cfg: RunConfig) -> tuple:
    tc = dataclasses.replace(cfg.train, **{f: getattr(RunConfig().train, f) for f in VARYING})
    return (cfg.model, cfg.data, tc, cfg.mesh)


def compatible(a: RunConfig, b: RunConfig) -> bool:
    """True when a and b can share one vmapped step: identical except train.seed (init and
    data order), train.lr (the peak LR lives in the state) and train.weight_decay (data of the
    step, one per model)."""
    return _shape_key(a) == _shape_key(b)


def _stacked(sh: jax.sharding.NamedSharding) -> jax.sharding.NamedSharding:
    """The same sharding with a new leading, unsharded model axis."""
    return jax.sharding.NamedSharding(sh.mesh, jax.sharding.PartitionSpec(None, *sh.spec))


def _select(mask_K: jax.Array, new: Any, old: Any) -> Any:
    def one(n, o):
        return jnp.where(mask_K.reshape(mask_K.shape + (1,) * (n.ndim - 1)), n, o)

    return jax.tree.map(one, new, old)


@dataclass(frozen=True)
class GroupSetup:
    """Compiled pieces for K models shaped like base.cfg (seed and peak LR live in the state,
    each model's weight decay in its step numbers).

    K = 1 runs `setup`'s own unstacked functions (no vmap, no mask), so a single run compiles and
    costs exactly its one-model step; K > 1 stacks every state leaf on a leading model axis.
    """

    base: Setup
    K: int
    init_fn: Callable[[jax.Array, jax.Array], State]  # (seeds[K], lrs[K]) -> state
    step_fn: Callable[[State, jax.Array, jax.Array], tuple[State, dict]]  # (.., active[K])
    eval_fn: Callable[[dict, jax.Array], dict]  # (params, tokens[B, L+1]) -> metrics
    state_shardings: Any
    batch_sharding: jax.sharding.NamedSharding

    def model_state(self, state: State, k: int) -> State:
        """Model k's own (unstacked) state."""
        return state if self.K == 1 else jax.tree.map(lambda x: x[k], state)

    def stack(self, states: Sequence[State]) -> State:
        """One state holding the K models' states."""
        if self.K == 1:
            return states[0]
        return jax.device_put(
            jax.tree.map(lambda *xs: jnp.stack(xs), *states), self.state_shardings
        )

    def per_model(self, metrics: dict) -> list[dict]:
        """Host metrics of a step or eval, split into one dict per model."""
        if self.K == 1:
            return [metrics]
        return [{n: v[k] for n, v in metrics.items()} for k in range(self.K)]

    def device_batch(self, local_BxL1: Sequence[np.ndarray]) -> jax.Array:
        """Global [K, A, B/A, L+1] batch ([A, B/A, L+1] when K = 1) from this process's rows of
        each model's global batch."""
        tc = self.base.cfg.train
        A = tc.grad_accum
        rows = local_BxL1[0] if self.K == 1 else np.stack(local_BxL1)
        local = rows.reshape(*rows.shape[:-2], A, rows.shape[-2] // A, rows.shape[-1])
        shape = (*local.shape[:-3], A, tc.batch_size // A, local.shape[-1])
        return jax.make_array_from_process_local_data(self.batch_sharding, local, shape)


def setup_group(cfgs: Sequence[RunConfig], mesh: jax.sharding.Mesh | None = None) -> GroupSetup:
    """Init/step/eval for the compatible models cfgs: vmapped for K > 1, setup's own for K = 1."""
    K = len(cfgs)
    _check_compatible(cfgs, "setup_group")
    s = setup(cfgs[0], mesh)
    if K == 1:

        def init_one(seeds: jax.Array, lrs: jax.Array) -> State:
            return s.init_fn()  # cfg's own seed and lr: cfg is the group's only config

        def step_one(state: State, batch: jax.Array, active: jax.Array) -> tuple[State, dict]:
            return s.step_fn(state, batch)  # the loop stops stepping once its one model is done

        return GroupSetup(
            base=s,
            K=1,
            init_fn=init_one,
            step_fn=step_one,
            eval_fn=s.eval_fn,
            state_shardings=s.state_shardings,
            batch_sharding=s.batch_sharding,
        )
    gp = _group_programs(_program_config(cfgs[0]), s.mesh, kernels.use_blocked_attention(), K)
    h_Kx7 = jax.device_put(np.stack([step_numbers(c.train) for c in cfgs]), s.numbers.sharding)
    return GroupSetup(
        base=s,
        K=K,
        init_fn=gp.init_jit,
        step_fn=lambda state, batch, active_K: gp.step_jit(state, batch, active_K, h_Kx7),
        eval_fn=gp.eval_jit,
        state_shardings=gp.state_sh,
        batch_sharding=gp.batch_sh,
    )


@functools.lru_cache(maxsize=16)
def _group_programs(cfg: RunConfig, mesh: jax.sharding.Mesh, blocked: bool, K: int) -> _Programs:
    """_programs vmapped over K models (setup's cache entry for a group)."""
    p = _programs(cfg, mesh, blocked)
    step = jax.vmap(build_step(cfg, p.graphdef, p.abstract), in_axes=(0, 0, 0))
    state_sh = jax.tree.map(_stacked, p.state_sh)
    batch_sh = _stacked(p.batch_sh)

    def group_step(state, batch, active_K, h_Kx7):
        new, metrics = step(state, batch, h_Kx7)
        # Finished or diverged models keep their state, so they cannot overflow or leak NaNs.
        return _select(active_K, new, state), metrics

    init_k = jax.vmap(p.init)
    return dataclasses.replace(
        p,
        state_sh=state_sh,
        batch_sh=batch_sh,
        state_abstract=jax.tree.map(
            lambda x, sh: jax.ShapeDtypeStruct((K, *x.shape), x.dtype, sharding=sh),
            p.state_abstract,
            state_sh,
        ),
        init=init_k,
        init_jit=jax.jit(init_k, out_shardings=state_sh),
        step_jit=jax.jit(
            group_step,
            in_shardings=(state_sh, batch_sh, p.replicated, p.replicated),
            out_shardings=(state_sh, p.replicated),
            donate_argnums=0,
        ),
        eval_jit=jax.jit(
            jax.vmap(build_eval(cfg, p.graphdef, p.abstract), in_axes=(0, None)),
            in_shardings=(state_sh["params"], p.eval_sh),
            out_shardings=p.replicated,
        ),
    )


def init_group(g: GroupSetup, cfgs: Sequence[RunConfig]) -> State:
    """Fresh state; model k equals setup(cfgs[k]).init_fn() (same seed, same lr)."""
    seeds = jnp.asarray([c.train.seed for c in cfgs], jnp.int32)
    lrs = jnp.asarray([c.train.lr for c in cfgs], jnp.float32)
    return g.init_fn(seeds, lrs)


# --- the training loop ------------------------------------------------------------------------

STARTUP_PREEMPTED = "SIGTERM during start-up, before anything was trained or written"
BAR_WINDOW = 20  # tokens/s measurements the progress bar's median spans
TRACKER_FILES = "TensorBoard/W&B files"


class _StartupPreempted(BaseException):
    """SIGTERM before the run files are written; a BaseException so no handler swallows it."""


class _Preemption:
    """SIGTERM handling for one session: until `defer()` (nothing written yet) it stops start-up
    at once; after it only sets a flag the loop polls, so a checkpoint is written first."""

    def __init__(self) -> None:
        self.requested = False
        self._immediate = True
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        if self._immediate:
            raise _StartupPreempted

    def defer(self) -> None:
        """From now on SIGTERM only sets `requested`; raise if one came during start-up."""
        if self.requested:  # a library may have swallowed the exception the handler raised
            raise _StartupPreempted
        self._immediate = False

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


@contextlib.contextmanager
def _naming_disk_full(what: str, where: Any) -> Iterator[None]:
    """Re-raise a bare ENOSPC as checkpoint.DiskFull naming what was written and where."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC or isinstance(e, checkpoint.DiskFull):
            raise
        raise checkpoint.DiskFull(what, where) from None


class _Run:
    """Host-side bookkeeping of one model of the loop (rows, status, checkpoints)."""

    def __init__(
        self, k: int, cfg: RunConfig, files: RunFiles, start: int, mngr: Any, writer: bool
    ) -> None:
        self.k, self.cfg, self.files, self.start, self.mngr = k, cfg, files, start, mngr
        self.writer = writer  # only process 0 writes run files; every process saves checkpoints
        self.step = start
        self.saved = start  # the newest step on disk (start: restored, or 0: nothing to save)
        self.status = "running" if start < cfg.train.steps else "done"
        self.last_loss = math.nan
        self.last_eval = math.nan
        self.rows: list[dict] = []
        self.hooks: list[Hook] = []  # trackers mirroring the rows (core.tracking), process 0 only
        self.error: str | None = None
        tc = cfg.train
        micro = tc.batch_size // tc.grad_accum
        self.gns = NoiseScaleEMA(micro, tc.batch_size, tc.gns_ema) if tc.gns else None

    @property
    def active(self) -> bool:
        return self.status == "running"

    def host_state(self) -> dict:
        """What logged columns depend on besides the device state; saved in each checkpoint."""
        return {"gns": self.gns.state()} if self.gns is not None else {}

    def load_host_state(self, host: dict) -> None:
        if self.gns is None:
            return
        if "gns" in host:
            self.gns.load(host["gns"])
        elif self.start:
            warnings.warn(
                f"{self.files.path}: checkpoint {self.start} holds no gradient-noise-scale state "
                "(written before it was saved); gns_b_simple restarts its EMA here",
                stacklevel=2,
            )

    def track(self, step: int, row: dict) -> None:
        """Mirror a metrics row (or an eval's loss) to the trackers."""
        with _naming_disk_full(TRACKER_FILES, self.files.path):
            for h in self.hooks:
                h.log(step, row)

    def close_hooks(self) -> None:
        with _naming_disk_full(TRACKER_FILES, self.files.path):
            for h in self.hooks:
                h.close()

    def flush(self) -> None:
        """Append the pending rows to metrics.jsonl, unless another worker took the run over."""
        self.files.check_lock()
        if self.writer:
            with _naming_disk_full("metrics", self.files.path):
                self.files.append_metrics(self.rows)
        self.rows.clear()

    def save(self, state: State) -> None:
        """Flush, then checkpoint this model's `state` with its host state."""
        self.flush()
        checkpoint.save(self.mngr, self.step, state, self.host_state())
        self.saved = self.step


def _check_group(cfgs: Sequence[RunConfig], runs: Sequence[RunFiles]) -> None:
    if not cfgs:
        raise ConfigError("train_group: cfgs is empty; pass at least one RunConfig")
    if len(cfgs) != len(runs):
        raise ConfigError(
            f"train_group: {len(cfgs)} configs but {len(runs)} run directories; "
            "pass one directory per config"
        )
    resolved = [Path(r.path).resolve() for r in runs]
    if len(set(resolved)) != len(resolved):
        raise ConfigError("train_group: run directories must be distinct")
    _check_compatible(cfgs, "train_group")


def _check_compatible(cfgs: Sequence[RunConfig], who: str) -> None:
    for i, c in enumerate(cfgs[1:], 1):
        if not compatible(cfgs[0], c):
            a, b = _shape_key(cfgs[0]), _shape_key(c)
            what = [n for n, x, y in zip(("model", "data", "train", "mesh"), a, b) if x != y]
            raise ConfigError(
                f"{who}: config {i} ({c.name!r}) differs from config 0 ({cfgs[0].name!r}) "
                f"in {', '.join(what)} beyond train.seed/lr/weight_decay; train it in its own group"
            )


def train(
    cfg: RunConfig,
    run: RunFiles,
    *,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    corpus: data_lib.Corpus | None = None,
    tracking: Tracking = Tracking(),
) -> dict:
    """Train one run into `run`, resuming from its latest checkpoint; returns the summary.

    Refuses (ConfigError) a directory holding another run, data that changed, or a run that
    cannot fit in memory, before writing anything. SIGTERM before training begins returns a
    summary with status 'preempted' and a 'note', having written nothing; SIGTERM later
    checkpoints first. A disk-full write raises checkpoint.DiskFull (an OSError).
    """
    return _train(
        [cfg], [run], progress=progress, mesh=mesh, corpus=corpus, grouped=False, tracking=tracking
    )[0]


def train_group(
    cfgs: Sequence[RunConfig],
    runs: Sequence[RunFiles],
    *,
    progress: bool = True,
    corpus: data_lib.Corpus | None = None,
    tracking: Tracking = Tracking(),
) -> list[dict]:
    """Train compatible runs together (one vmapped step), each resumable in its own directory;
    returns their summaries in order. A diverged model is masked; the others carry on."""
    return _train(
        list(cfgs),
        list(runs),
        progress=progress,
        mesh=None,
        corpus=corpus,
        grouped=True,
        tracking=tracking,
    )


def _train(
    cfgs: list[RunConfig],
    runs: list[RunFiles],
    *,
    progress: bool,
    mesh: jax.sharding.Mesh | None,
    corpus: data_lib.Corpus | None,
    grouped: bool,
    tracking: Tracking,
) -> list[dict]:
    _check_group(cfgs, runs)
    with _Preemption() as pre:
        try:
            g, corpus, ident = _start(cfgs, runs, mesh, corpus)
            pre.defer()
        except _StartupPreempted:
            return [
                {**_summary_base(c), "status": "preempted", "note": STARTUP_PREEMPTED} for c in cfgs
            ]
        is_main = jax.process_index() == 0
        try:
            if is_main:
                for c, r in zip(cfgs, runs):
                    with _naming_disk_full("the run's config and manifest", r.path):
                        r.claim(c, ident)
            with jax.set_mesh(g.base.mesh):
                return _loop(
                    cfgs,
                    runs,
                    g,
                    corpus,
                    pre,
                    progress=progress and is_main,
                    grouped=grouped,
                    tracking=tracking,
                )
        except checkpoint.DiskFull as e:
            if is_main:
                _record_failure(cfgs, runs, e)
            raise


def _start(
    cfgs: list[RunConfig],
    runs: list[RunFiles],
    mesh: jax.sharding.Mesh | None,
    corpus: data_lib.Corpus | None,
) -> tuple[GroupSetup, data_lib.Corpus, dict]:
    """Everything before the first write: corpus, run identity, step setup, memory check."""
    for r in runs:
        r.check_writable()
    base = cfgs[0]
    shd.maybe_initialize_distributed(base.mesh)
    if len(cfgs) > 1 and jax.process_count() > 1:
        raise ConfigError("train_group: runs on one process; use train.train for multi-host runs")
    mc = base.model
    corpus = corpus if corpus is not None else data_lib.load_corpus(base.data)
    if corpus.vocab_size > mc.vocab_size:
        raise ConfigError(
            f"ModelConfig.vocab_size={mc.vocab_size} is smaller than the tokenizer's "
            f"{corpus.vocab_size}; set model.vocab_size={corpus.vocab_size}"
        )
    ident = provenance.data_identity(corpus)
    # Every process refuses a directory holding another run (or other data) before any write.
    for c, r in zip(cfgs, runs):
        r.check_identity(c, ident)
    g = setup_group(cfgs, mesh)
    memory.check(base, len(cfgs), g.base.mesh)
    data_lib.warn_if_repeated(corpus, base.total_tokens)
    return g, corpus, ident


def _record_failure(cfgs: list[RunConfig], runs: list[RunFiles], err: OSError) -> None:
    """A summary with status 'failed' naming the error, where one can still be written."""
    for c, r in zip(cfgs, runs):
        try:
            r.check_lock()
            r.write_summary({**_summary_base(c), "status": "failed", "error": str(err)})
        except (OSError, RuntimeError):  # a full disk, or a lock lost (store.LockLost)
            pass


def _restore_or_init(
    g: GroupSetup, cfgs: list[RunConfig], files: list[RunFiles], stack: contextlib.ExitStack
) -> tuple[State, list[_Run]]:
    """Each model's newest checkpoint that restores, or a fresh init; metrics truncated to
    match."""
    abstract = g.base.state_abstract
    writer = jax.process_index() == 0
    fresh = None
    runs, states = [], []
    for k, (c, f) in enumerate(zip(cfgs, files)):
        mngr = checkpoint.manager(f.checkpoint_dir, c.train)
        # Waits for in-flight async saves even when training raises (e.g. disk full).
        stack.callback(checkpoint.close, mngr)
        restored = checkpoint.restore(mngr, abstract, f.quarantine_dir)
        from_trunk = restored is None and bool(c.train.branch_of)
        if from_trunk:
            # A branch's first session starts from its trunk; later ones from its own
            # checkpoints, so a preempted branch never re-reads (or retrains) the trunk.
            restored = _trunk_checkpoint(c, f, abstract)
        if restored is None:
            fresh = init_group(g, cfgs) if fresh is None else fresh
            st, start, host = g.model_state(fresh, k), 0, {}
        else:
            st, start, host = restored.state, restored.step, restored.host
            if np.float32(st["lr"]) != np.float32(c.train.lr):
                where = f"trunk {c.train.branch_of}" if from_trunk else repr(str(f.path))
                raise ConfigError(
                    f"{where}: checkpoint has lr={float(st['lr'])} but the config says "
                    f"{c.train.lr}; use a fresh run directory"
                )
        if writer:
            with _naming_disk_full("metrics", f.path):
                f.truncate_metrics(0 if from_trunk else start)
                if from_trunk:
                    # The trunk's rows up to the branch point, so the branch's curve (and its
                    # lr column) covers its whole schedule; `trunk` marks them as copied.
                    rows = f.trunk(c.train.branch_of).read_metrics()
                    f.append_metrics(
                        [
                            {**r, "trunk": c.train.branch_of}
                            for r in rows
                            if r.get("step", math.inf) <= start
                        ]
                    )
        run = _Run(k, c, f, start, mngr, writer)
        run.load_host_state(host)
        # A resumed run carries its latest logged losses, so a run resumed at its end reports them.
        for row in f.read_metrics() if start else []:
            run.last_loss = row.get("loss", run.last_loss)
            run.last_eval = row.get("eval_loss", run.last_eval)
        runs.append(run)
        states.append(st)
    return g.stack(states), runs


def _trunk_checkpoint(cfg: RunConfig, files: RunFiles, abstract: State) -> checkpoint.Restored:
    """The trunk's checkpoint at cfg's branch step; ConfigError naming the trunk if missing."""
    tc = cfg.train
    trunk = files.trunk(tc.branch_of)
    sessions = trunk.sessions()  # none when the trunk is gone: the missing checkpoint says so
    was = provenance.semantics_of(sessions)
    if sessions and was != provenance.TRAINING_SEMANTICS:
        raise ConfigError(
            f"branch {cfg.name!r}: its trunk {tc.branch_of} was trained under training semantics "
            f"{provenance.semantics_label(was)}, this code trains "
            f"{provenance.TRAINING_SEMANTICS} (core/provenance.py); move {trunk.path} aside so "
            "the sweep retrains it"
        )
    out = checkpoint.restore_step(trunk.checkpoint_dir, tc.branch_step, abstract)
    if out is None:
        raise ConfigError(
            f"branch {cfg.name!r}: its trunk {tc.branch_of} has no checkpoint at step "
            f"{tc.branch_step} in {trunk.checkpoint_dir}; train the trunk first (`jaxscale sweep "
            f"run` trains trunks before branches), or, if it finished without this branch point, "
            f"move {trunk.path} aside so the sweep retrains it with this study's branch points"
        )
    return out


def _loop(
    cfgs: list[RunConfig],
    files: list[RunFiles],
    g: GroupSetup,
    corpus: data_lib.Corpus,
    pre: _Preemption,
    *,
    progress: bool,
    grouped: bool,
    tracking: Tracking,
) -> list[dict]:
    base = cfgs[0]
    tc, mc, K = base.train, base.model, g.K
    fpt = flops_lib.flops_per_token(mc, "kaplan_attn")
    # MFU counts what the model needs, PaLM-style (full attention, no remat recompute).
    fpt_mfu = flops_lib.flops_per_token(mc, "exact")
    peak, peak_source = flops_lib.device_peak_flops(mc.compute_dtype)
    n_dev = jax.device_count()
    val = data_lib.eval_batches(
        corpus.val, batch_size=tc.batch_size, seq_len=mc.context_length, n_batches=tc.eval_batches
    )
    # Every process holds the full eval set, so a callback places each shard (multi-host safe).
    val_dev = [
        jax.make_array_from_callback(v.shape, g.base.eval_sharding, lambda idx, v=v: v[idx])
        for v in val
    ]
    per_model_tokens = base.tokens_per_step
    pending: list[tuple[list[tuple[_Run, int]], dict]] = []
    tps, n_live = math.nan, K
    # The bar shows a median over recent measurements: single intervals are noisy on CPU.
    tps_recent: collections.deque[float] = collections.deque(maxlen=BAR_WINDOW)

    def mfu_of(tokens_per_s: float) -> float:
        # MFU is the hardware's: every live model's tokens share the devices.
        return tokens_per_s * n_live * fpt_mfu / (peak * n_dev) if peak else math.nan

    def record(r: _Run, step_no: int, m: dict) -> None:
        row = {
            "step": step_no,
            "tokens": step_no * per_model_tokens,
            "flops": step_no * per_model_tokens * fpt,
            "loss": float(m["loss"]),
            "lr": float(m["lr"]),
            "grad_norm": float(m["grad_norm"]),
            "tokens_per_s": tps,
            "mfu": mfu_of(tps),
            "time": time.time(),
        }
        if r.gns is not None:
            b = r.gns.update(float(m["g_small_sq"]), float(m["g_big_sq"]))
            row["gns_b_simple"] = b
            row["gns_b_simple_tokens"] = b * mc.context_length
        r.rows.append(row)
        r.track(step_no, row)
        if not math.isfinite(row["loss"]):
            r.status = "diverged"
            r.error = f"non-finite training loss at step {step_no}"
            r.step = step_no
            r.flush()
            return
        r.last_loss = row["loss"]

    def drain(keep: int) -> None:
        """Read metrics of finished steps a step late, so the host never stalls the device."""
        while len(pending) > keep:
            who, m = pending.pop(0)
            per = g.per_model(jax.device_get(m))
            for r, step_no in who:
                if r.active:
                    record(r, step_no, per[r.k])

    def evaluate(rs: list[_Run]) -> None:
        outs = jax.device_get([g.eval_fn(state["params"], v) for v in val_dev])
        outs = [g.per_model(o) for o in outs]
        for r in rs:
            r.last_eval = float(np.mean([o[r.k]["loss"] for o in outs]))
            r.track(r.step, {"eval_loss": r.last_eval})
            for row in reversed(r.rows):
                if row["step"] == r.step:
                    row["eval_loss"] = r.last_eval
                    if r.step == tc.steps:
                        by_pos = np.mean([o[r.k]["loss_by_pos"] for o in outs], axis=0)
                        row["eval_loss_by_pos"] = [round(float(x), 5) for x in by_pos]
                    break

    def save(rs: list[_Run]) -> None:
        for r in rs:
            r.save(g.model_state(state, r.k))

    pi, pc = jax.process_index(), jax.process_count()
    with contextlib.ExitStack() as stack:
        state, runs = _restore_or_init(g, cfgs, files, stack)
        for r in runs:
            if r.writer:  # process 0 only; each run of a group its own event directory
                stack.callback(r.close_hooks)
                with _naming_disk_full(TRACKER_FILES, r.files.path):
                    r.hooks = tracking.open(
                        r.cfg, r.files.tensorboard_dir, r.start, r.files.sessions()
                    )
        feeds = [
            stack.enter_context(
                contextlib.closing(
                    data_lib.Prefetcher(
                        corpus.train,
                        seed=r.cfg.train.seed,
                        start=r.start,
                        end=tc.steps,
                        batch_size=tc.batch_size,
                        seq_len=mc.context_length,
                        shard_index=pi,
                        num_shards=pc,
                    )
                )
            )
            for r in runs
        ]
        first = min(r.start for r in runs)
        bar = _progress_bar(progress, first, tc.steps, base.name if K == 1 else f"{base.name} x{K}")
        dummy = np.zeros((tc.batch_size // pc, mc.context_length + 1), np.int32)
        t0 = time.perf_counter()
        t_last, it_last, it = t0, 0, 0
        while live := [r for r in runs if r.active]:
            if pre.requested:
                # Checked before each step, so a SIGTERM during the first compile or restore
                # stops here too; a SIGTERM on a model's last step still finished it (done).
                drain(keep=0)
                still = [r for r in live if r.active]
                save([r for r in still if r.step > r.saved])
                for r in still:
                    r.status = "preempted"
                break
            n_live = len(live)
            batch = g.device_batch([next(feeds[r.k]) if r.active else dummy for r in runs])
            state, m = g.step_fn(state, batch, np.array([r.active for r in runs]))
            for r in live:
                r.step += 1
            pending.append(([(r, r.step) for r in live], m))
            it += 1
            drain(keep=1)
            at_eval = [r for r in live if r.step % tc.eval_every == 0 or r.step == tc.steps]
            # A trunk also checkpoints its branch points (kept: checkpoint.manager).
            at_ckpt = [
                r
                for r in live
                if r.step % tc.checkpoint_every == 0
                or r.step == tc.steps
                or r.step in tc.branch_points
            ]
            if at_eval or at_ckpt or pre.requested:
                drain(keep=0)
            if it % tc.log_every == 0 or at_eval:
                now = time.perf_counter()
                # Each model's own tokens/s (the group processes n_live times as many).
                tps = (it - it_last) * per_model_tokens / max(now - t_last, 1e-9)
                t_last, it_last = now, it
                tps_recent.append(tps)
            if to_eval := [r for r in at_eval if r.active]:
                evaluate(to_eval)
            save([r for r in at_ckpt if r.active])
            for r in live:
                if r.active and r.step >= tc.steps:
                    r.status = "done"
            if bar is not None:
                lead = live[0]
                bar.update(1)
                post = _bar_postfix(lead.last_loss, lead.last_eval, tps_recent, mfu_of)
                if K > 1:
                    post["live"] = str(n_live)
                bar.set_postfix(post, refresh=False)  # a dict keeps its order; kwargs are sorted
        drain(keep=0)
    wall = time.perf_counter() - t0
    for r in runs:
        r.flush()
    if bar is not None:
        bar.close()
    steps_K = np.atleast_1d(jax.device_get(state["step"]))
    done_K = [r.step if r.status == "diverged" else int(steps_K[r.k]) for r in runs]
    trained = sum(d - r.start for d, r in zip(done_K, runs))
    # MFU is the hardware's: every model's trained tokens over the same wall time.
    hw_tps = trained * per_model_tokens / max(wall, 1e-9)
    summaries = []
    for r, done in zip(runs, done_K):
        tokens = done * per_model_tokens
        summary = {
            **_summary_base(r.cfg),
            "status": r.status,
            "steps": done,
            "tokens": tokens,
            "loss": r.last_eval,
            "train_loss": r.last_loss,
            "flops": {c: flops_lib.flops_per_token(mc, c) * tokens for c in flops_lib.CONVENTIONS},
            "wall_time_s": wall,
            "tokens_per_s": (tokens - r.start * per_model_tokens) / max(wall, 1e-9),
            "peak_flops_per_device": peak,
            "peak_flops_source": peak_source,
            "mfu": hw_tps * fpt_mfu / (peak * n_dev) if peak else math.nan,
        }
        if r.cfg.train.branch_of:
            # "flops" is the equivalent independent run's C (what the frontier and fit use);
            # the branch itself spent only its steps after the trunk's (Hägele et al. 2024).
            own = (done - r.cfg.train.branch_step) * per_model_tokens
            summary["flops_own"] = {
                c: flops_lib.flops_per_token(mc, c) * own for c in flops_lib.CONVENTIONS
            }
        if grouped:
            summary["group_size"] = K
        if r.error:
            summary["error"] = r.error
        r.files.check_lock()
        if r.writer:
            with _naming_disk_full("the summary", r.files.path):
                r.files.write_summary(summary)
        summaries.append(summary)
    return summaries


def _summary_base(cfg: RunConfig) -> dict:
    mc = cfg.model
    tau = cfg.adamw_timescale
    return {
        "run_id": cfg.run_id(),
        "name": cfg.name,
        "n_params": mc.n_params,
        "n_params_nonembedding": mc.n_params_nonembedding,
        "n_params_embedding": mc.n_params_embedding,
        "tokens_per_step": cfg.tokens_per_step,
        "planned_steps": cfg.train.steps,
        # The AdamW timescale τ = B/(ηλD) and its inputs (RunConfig.adamw_timescale); null τ
        # when λ = 0, as JSON has no infinity.
        "peak_lr": cfg.train.lr,
        "weight_decay": cfg.train.weight_decay,
        "planned_tokens": cfg.total_tokens,
        "adamw_tau": tau if math.isfinite(tau) else None,
    }


def _bar_postfix(
    loss: float, eval_loss: float, tps_recent: Sequence[float], mfu_of: Callable[[float], float]
) -> dict[str, str]:
    """The bar's readout: train loss, the last eval loss (none before the first eval), and
    tokens/s and MFU as medians of the recent measurements."""
    post = {"loss": f"{loss:.3f}"}
    if math.isfinite(eval_loss):
        post["eval"] = f"{eval_loss:.3f}"
    if tps_recent:
        tps = float(np.median(tps_recent))
        post["tok/s"] = f"{tps:,.0f}"
        if math.isfinite(mfu_of(tps)):
            post["mfu"] = f"{100 * mfu_of(tps):.1f}%"
    return post


def _progress_bar(enabled: bool, start: int, total: int, name: str):
    if not enabled:
        return None
    return tqdm(total=total, initial=start, desc=name, unit="step", dynamic_ncols=True)
