"""Train K same-shape models in one jitted step: `vmap` over parameters, optimizer states and
data streams, each run's directory written exactly as `train.train` would write it."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxscale.config import ConfigError, RunConfig
from jaxscale.core import data as data_lib
from jaxscale.core import flops as flops_lib
from jaxscale.core import model as model_lib
from jaxscale.core import sharding as shd
from jaxscale.core import train as train_lib
from jaxscale.core.noise import NoiseScaleEMA
from jaxscale.runs import store

# TrainConfig fields that may differ inside a group: they only change values, not shapes.
VARYING = ("seed", "lr")


def _shape_key(cfg: RunConfig) -> tuple:
    tc = dataclasses.replace(cfg.train, **{f: getattr(RunConfig().train, f) for f in VARYING})
    return (cfg.model, cfg.data, tc, cfg.mesh)


def compatible(a: RunConfig, b: RunConfig) -> bool:
    """True when a and b can share one vmapped step: identical except train.seed (init and
    data order) and train.lr (the peak LR lives in the state)."""
    return _shape_key(a) == _shape_key(b)


def _check_group(cfgs: Sequence[RunConfig], run_dirs: Sequence[Path]) -> None:
    if not cfgs:
        raise ConfigError("train_group: cfgs is empty; pass at least one RunConfig")
    if len(cfgs) != len(run_dirs):
        raise ConfigError(
            f"train_group: {len(cfgs)} configs but {len(run_dirs)} run directories; "
            "pass one directory per config"
        )
    resolved = [p.resolve() for p in run_dirs]
    if len(set(resolved)) != len(resolved):
        raise ConfigError("train_group: run directories must be distinct")
    for i, c in enumerate(cfgs[1:], 1):
        if not compatible(cfgs[0], c):
            a, b = _shape_key(cfgs[0]), _shape_key(c)
            what = [n for n, x, y in zip(("model", "data", "train", "mesh"), a, b) if x != y]
            raise ConfigError(
                f"train_group: config {i} ({c.name!r}) differs from config 0 ({cfgs[0].name!r}) "
                f"in {', '.join(what)} beyond train.seed/train.lr; train it in its own group"
            )


def _stacked(sh: jax.sharding.NamedSharding) -> jax.sharding.NamedSharding:
    """The same sharding with a new leading, unsharded model axis."""
    return jax.sharding.NamedSharding(sh.mesh, jax.sharding.PartitionSpec(None, *sh.spec))


def _select(mask_K: jax.Array, new: Any, old: Any) -> Any:
    def one(n, o):
        return jnp.where(mask_K.reshape(mask_K.shape + (1,) * (n.ndim - 1)), n, o)

    return jax.tree.map(one, new, old)


@dataclasses.dataclass(frozen=True)
class GroupSetup:
    """Compiled pieces for K models of one shape."""

    base: train_lib.Setup
    K: int
    init_fn: Any  # (seeds[K], lrs[K]) -> stacked state
    step_fn: Any  # (state, batch[K, A, B/A, L+1], active[K]) -> (state, metrics[K])
    eval_fn: Any  # (params[K], tokens[B, L+1]) -> metrics[K]
    state_shardings: Any
    batch_sharding: jax.sharding.NamedSharding


def setup_group(cfg: RunConfig, K: int, mesh: jax.sharding.Mesh | None = None) -> GroupSetup:
    """Vmapped init/step/eval for K models shaped like cfg (seed and lr come from the state)."""
    s = train_lib.setup(cfg, mesh)
    mc = cfg.model
    tx = train_lib.make_optimizer(cfg.train)
    step = jax.vmap(train_lib.build_step(cfg, s.graphdef, s.abstract, tx))
    eval_one = train_lib.build_eval(cfg, s.graphdef, s.abstract)
    state_sh = jax.tree.map(_stacked, s.state_shardings)
    batch_sh = _stacked(s.batch_sharding)
    replicated = jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec())

    def init_one(seed, lr):

        # jax.random.key(seed) is what nnx.Rngs builds from an int seed in train.setup.
        _, st = model_lib.init_state(mc, jax.random.key(seed))
        params = nnx.to_pure_dict(st)
        return {
            "params": params,
            "opt": tx.init(params),
            "step": jnp.zeros((), jnp.int32),
            "lr": lr.astype(jnp.float32),
        }

    def group_step(state, batch, active_K):
        new, metrics = step(state, batch)
        # Finished or diverged models keep their state, so they cannot overflow or leak NaNs.
        return _select(active_K, new, state), metrics

    return GroupSetup(
        base=s,
        K=K,
        init_fn=jax.jit(jax.vmap(init_one), out_shardings=state_sh),
        step_fn=jax.jit(
            group_step,
            in_shardings=(state_sh, batch_sh, replicated),
            out_shardings=(state_sh, replicated),
            donate_argnums=0,
        ),
        eval_fn=jax.jit(
            jax.vmap(eval_one, in_axes=(0, None)),
            in_shardings=(state_sh["params"], s.eval_sharding),
            out_shardings=replicated,
        ),
        state_shardings=state_sh,
        batch_sharding=batch_sh,
    )


def init_group(g: GroupSetup, cfgs: Sequence[RunConfig]) -> dict:
    """Fresh stacked state; model k equals train.setup(cfgs[k]).init_fn() (same seed, same lr)."""
    seeds = jnp.asarray([c.train.seed for c in cfgs], jnp.int32)
    lrs = jnp.asarray([c.train.lr for c in cfgs], jnp.float32)
    return g.init_fn(seeds, lrs)


class _Run:
    """Host-side bookkeeping of one model in the group (rows, status, checkpoints)."""

    def __init__(self, k: int, cfg: RunConfig, run_dir: Path, start: int, mngr) -> None:
        self.k, self.cfg, self.dir, self.start, self.mngr = k, cfg, run_dir, start, mngr
        self.step = start
        self.status = "running" if start < cfg.train.steps else "done"
        self.last_loss = math.nan
        self.last_eval = math.nan
        self.rows: list[dict] = []
        self.error: str | None = None
        tc = cfg.train
        self.gns = (
            NoiseScaleEMA(tc.batch_size // tc.grad_accum, tc.batch_size, tc.gns_ema)
            if tc.gns
            else None
        )

    @property
    def active(self) -> bool:
        return self.status == "running"

    def flush(self) -> None:
        store.append_jsonl(self.dir / "metrics.jsonl", self.rows)
        self.rows.clear()


def train_group(
    cfgs: Sequence[RunConfig], run_dirs: Sequence[str | Path], *, progress: bool = True
) -> list[dict]:
    """Train compatible runs together (one vmapped step), each resumable in its own run_dir;
    returns their summaries in order. A diverged model is masked; the others carry on."""
    cfgs, run_dirs = list(cfgs), [Path(p) for p in run_dirs]
    _check_group(cfgs, run_dirs)
    for d in run_dirs:
        train_lib._check_writable(d)
    base = cfgs[0]
    shd.maybe_initialize_distributed(base.mesh)
    if jax.process_count() > 1:
        raise ConfigError("train_group: runs on one process; use train.train for multi-host runs")
    corpus = data_lib.load_corpus(base.data)
    if corpus.vocab_size > base.model.vocab_size:
        raise ConfigError(
            f"ModelConfig.vocab_size={base.model.vocab_size} is smaller than the tokenizer's "
            f"{corpus.vocab_size}; set model.vocab_size={corpus.vocab_size}"
        )
    data_lib.warn_if_repeated(corpus, base.total_tokens)
    g = setup_group(base, len(cfgs))
    for c, d in zip(cfgs, run_dirs):
        store.write_json_atomic(d / "config.json", {**c.to_dict(), "run_id": c.run_id()})
    with jax.set_mesh(g.base.mesh):
        return _group_loop(cfgs, run_dirs, g, corpus, progress)


def _restore_or_init(g: GroupSetup, cfgs, run_dirs) -> tuple[dict, list[_Run]]:
    s = g.base
    abstract = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
        jax.eval_shape(s.init_fn),
        s.state_shardings,
    )
    fresh = init_group(g, cfgs)
    runs, states = [], []
    for k, (c, d) in enumerate(zip(cfgs, run_dirs)):
        mngr = train_lib._checkpoint_manager(d, c.train)
        st, start = train_lib._restore_latest(mngr, abstract, d / "corrupt_checkpoints")
        if st is None:
            st, start = jax.tree.map(lambda x, k=k: x[k], fresh), 0
        elif np.float32(st["lr"]) != np.float32(c.train.lr):
            raise ConfigError(
                f"{str(d)!r}: checkpoint has lr={float(st['lr'])} but the config says "
                f"{c.train.lr}; use a fresh run directory"
            )
        store.truncate_jsonl_after(d / "metrics.jsonl", start)
        run = _Run(k, c, d, start, mngr)
        # A resumed run carries its latest logged losses (as train.train does).
        for row in store.read_jsonl(d / "metrics.jsonl") if start else []:
            run.last_loss = row.get("loss", run.last_loss)
            run.last_eval = row.get("eval_loss", run.last_eval)
        runs.append(run)
        states.append(st)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    return jax.device_put(stacked, g.state_shardings), runs


def _group_loop(cfgs, run_dirs, g: GroupSetup, corpus, progress: bool) -> list[dict]:
    base = cfgs[0]
    tc, mc, K = base.train, base.model, g.K
    state, runs = _restore_or_init(g, cfgs, run_dirs)
    fpt = flops_lib.flops_per_token(mc, "kaplan_attn")
    fpt_mfu = flops_lib.flops_per_token(mc, "exact")
    peak, _ = flops_lib.device_peak_flops(mc.compute_dtype)
    n_dev = jax.device_count()
    val = data_lib.eval_batches(
        corpus.val, batch_size=tc.batch_size, seq_len=mc.context_length, n_batches=tc.eval_batches
    )
    val_dev = [jax.device_put(v, g.base.eval_sharding) for v in val]
    A, B, L1 = tc.grad_accum, tc.batch_size, mc.context_length + 1
    dummy = np.zeros((B, L1), np.int32)
    feeds = [
        data_lib.Prefetcher(
            corpus.train,
            seed=r.cfg.train.seed,
            start=r.start,
            end=tc.steps,
            batch_size=B,
            seq_len=mc.context_length,
        )
        for r in runs
    ]
    first = min(r.start for r in runs)
    bar = train_lib._progress_bar(progress, first, tc.steps, f"{base.name} x{K}")
    pending: list[tuple[list[tuple[_Run, int]], dict]] = []
    t0 = time.perf_counter()
    t_last, it_last, tps = t0, 0, math.nan
    n_live = K
    per_model_tokens = base.tokens_per_step

    def record(r: _Run, step_no: int, m: dict) -> None:
        row = {
            "step": step_no,
            "tokens": step_no * per_model_tokens,
            "flops": step_no * per_model_tokens * fpt,
            "loss": float(m["loss"][r.k]),
            "lr": float(m["lr"][r.k]),
            "grad_norm": float(m["grad_norm"][r.k]),
            "tokens_per_s": tps,
            # MFU is the hardware's: every live model's tokens share the devices.
            "mfu": tps * n_live * fpt_mfu / (peak * n_dev) if peak else math.nan,
            "time": time.time(),
        }
        if r.gns is not None:
            b = r.gns.update(float(m["g_small_sq"][r.k]), float(m["g_big_sq"][r.k]))
            row["gns_b_simple"] = b
            row["gns_b_simple_tokens"] = b * mc.context_length
        r.rows.append(row)
        if not math.isfinite(row["loss"]):
            r.status = "diverged"
            r.error = f"non-finite training loss at step {step_no}"
            r.step = step_no
            r.flush()
            return
        r.last_loss = row["loss"]

    def drain(keep: int) -> None:
        """Read metrics a step late, so the host never stalls the device."""
        while len(pending) > keep:
            who, m = pending.pop(0)
            m = jax.device_get(m)
            for r, step_no in who:
                if r.active:
                    record(r, step_no, m)

    def evaluate(rs: list[_Run]) -> None:
        outs = jax.device_get([g.eval_fn(state["params"], v) for v in val_dev])
        loss_K = np.mean([o["loss"] for o in outs], axis=0)
        by_pos_KxL = np.mean([o["loss_by_pos"] for o in outs], axis=0)
        for r in rs:
            r.last_eval = float(loss_K[r.k])
            for row in reversed(r.rows):
                if row["step"] == r.step:
                    row["eval_loss"] = r.last_eval
                    if r.step == tc.steps:
                        row["eval_loss_by_pos"] = [round(float(x), 5) for x in by_pos_KxL[r.k]]
                    break

    def save(rs: list[_Run]) -> None:
        for r in rs:
            r.flush()
            one = jax.tree.map(lambda x, k=r.k: x[k], state)
            r.mngr.save(r.step, args=train_lib._ckpt_args(one))

    it = 0
    with train_lib._Preemption() as pre, contextlib.ExitStack() as stack:
        for f in feeds:
            stack.enter_context(contextlib.closing(f))
        while any(r.active for r in runs):
            live = [r for r in runs if r.active]
            n_live = len(live)
            rows_B = [next(feeds[r.k]) if r.active else dummy for r in runs]
            batch = np.stack(rows_B).reshape(K, A, B // A, L1)
            active = np.array([r.active for r in runs])
            state, m = g.step_fn(state, jax.device_put(batch, g.batch_sharding), active)
            for r in live:
                r.step += 1
            pending.append(([(r, r.step) for r in live], m))
            it += 1
            drain(keep=1)
            at_eval = [r for r in live if r.step % tc.eval_every == 0 or r.step == tc.steps]
            at_ckpt = [r for r in live if r.step % tc.checkpoint_every == 0 or r.step == tc.steps]
            if at_eval or at_ckpt or pre.requested:
                drain(keep=0)
            if it % tc.log_every == 0 or at_eval:
                now = time.perf_counter()
                # Each model's own tokens/s (the group processes K times as many).
                tps = (it - it_last) * per_model_tokens / max(now - t_last, 1e-9)
                t_last, it_last = now, it
            ok = lambda rs: [r for r in rs if r.active]
            if ok(at_eval):
                evaluate(ok(at_eval))
            if ok(at_ckpt):
                save(ok(at_ckpt))
            for r in live:
                if r.active and r.step >= tc.steps:
                    r.status = "done"
            if pre.requested:
                still = [r for r in runs if r.active]
                save([r for r in still if r not in at_ckpt])
                for r in still:
                    r.status = "preempted"
                break
            if bar is not None:
                bar.update(1)
                lead = live[0]
                bar.set_postfix(loss=f"{lead.last_loss:.3f}", live=len(live), refresh=False)
        drain(keep=0)
    wall = time.perf_counter() - t0
    for r in runs:
        r.mngr.wait_until_finished()
        r.mngr.close()
        r.flush()
    if bar is not None:
        bar.close()
    steps_K = np.asarray(jax.device_get(state["step"]))
    trained = sum((int(steps_K[r.k]) if r.status != "diverged" else r.step) - r.start for r in runs)
    group_tps = trained * base.tokens_per_step / max(wall, 1e-9)
    summaries = []
    for r in runs:
        c = r.cfg
        done = int(steps_K[r.k]) if r.status != "diverged" else r.step
        tokens = done * c.tokens_per_step
        tps_k = (tokens - r.start * c.tokens_per_step) / max(wall, 1e-9)
        summary = {
            **train_lib._summary_base(c),
            "status": r.status,
            "steps": done,
            "tokens": tokens,
            "loss": r.last_eval,
            "train_loss": r.last_loss,
            "flops": {
                cv: flops_lib.flops_per_token(mc, cv) * tokens for cv in flops_lib.CONVENTIONS
            },
            "wall_time_s": wall,
            "tokens_per_s": tps_k,
            "peak_flops_per_device": peak,
            "mfu": group_tps * fpt_mfu / (peak * n_dev) if peak else math.nan,
            "group_size": K,
        }
        if r.error:
            summary["error"] = r.error
        store.write_json_atomic(r.dir / "summary.json", summary)
        summaries.append(summary)
    return summaries
