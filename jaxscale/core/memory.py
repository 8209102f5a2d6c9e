"""Will a run fit? A rough lower bound of training memory, checked before anything is allocated."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from jaxscale.config import ConfigError, RunConfig

# Train batches alive at once on the host: the prefetch queue (2) and the one being copied.
HOST_BATCHES = 3


def estimate(cfg: RunConfig, K: int = 1, mesh: jax.sharding.Mesh | None = None) -> dict:
    """Bytes K models shaped like cfg need at least, by part: per device 'parameters',
    'optimizer' (the two Adam moments), 'gradients' (plus the accumulation buffer when
    grad_accum > 1) and 'activations' (one microbatch); on the host 'batches' (the prefetched
    train batches and the eval set, int32).

    Activations: per layer and token a forward pass keeps about 10 d_model + 2 d_ff (3 d_ff
    with SwiGLU) + 2 n_heads L values in the compute dtype (cf. Korthikanti et al. 2022, sec.
    4); with remat only each layer's d_model input, plus one layer recomputed; the float32
    logits add the padded vocabulary per token. Parameters and optimizer state divide over the
    fsdp x tensor mesh axes, activations over data x fsdp. XLA's workspace, fragmentation and
    transient copies come on top, so a run within the estimate may still not fit.
    """
    mc, tc = cfg.model, cfg.train
    axes = dict(mesh.shape) if mesh is not None else {}
    model_shards = axes.get("fsdp", 1) * axes.get("tensor", 1)
    batch_shards = axes.get("data", 1) * axes.get("fsdp", 1)
    param_bytes = jnp.dtype(mc.param_dtype).itemsize
    act_bytes = jnp.dtype(mc.compute_dtype).itemsize
    params = K * mc.n_params * param_bytes / model_shards
    L = mc.context_length
    mlp = (3 if mc.activation == "swiglu" else 2) * mc.d_ff
    per_layer = 10 * mc.d_model + mlp + 2 * mc.n_heads * L
    kept = mc.n_layers * per_layer if mc.remat == "none" else mc.n_layers * mc.d_model + per_layer
    tokens = tc.batch_size // tc.grad_accum * L
    seq_bytes = tc.batch_size * (L + 1) * 4 / jax.process_count()
    return {
        "parameters": params,
        "optimizer": 2 * params,
        "gradients": params * (2 if tc.grad_accum > 1 else 1),
        "activations": K * tokens * (kept * act_bytes + mc.padded_vocab * 4) / batch_shards,
        "batches": (HOST_BATCHES * K + tc.eval_batches) * seq_bytes,
    }


def available_host_bytes() -> int | None:
    """Host memory this process may still take: MemAvailable, capped by its cgroup's limit
    (Linux); None where neither is known."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            free = int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
            avail = free if avail is None else min(avail, free)
    except (OSError, ValueError):
        pass
    return avail


def check(cfg: RunConfig, K: int, mesh: jax.sharding.Mesh) -> None:
    """ConfigError with the numbers if `estimate` exceeds the free memory of a device (where
    the backend reports it) or of the host (on CPU every local device lives in host RAM)."""
    est = estimate(cfg, K, mesh)
    parts = ("parameters", "optimizer", "gradients", "activations")
    per_device = sum(est[p] for p in parts)
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    stats = local[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        if per_device > free:
            _refuse(cfg, est, parts, per_device, free, f"{local[0].device_kind} memory")
        host, host_parts = est["batches"], ("batches",)
    else:
        host, host_parts = per_device * len(local) + est["batches"], (*parts, "batches")
        est = {p: v * (len(local) if p in parts else 1) for p, v in est.items()}
    free = available_host_bytes()
    if free is not None and host > free:
        _refuse(cfg, est, host_parts, host, free, "host memory")


def _refuse(cfg: RunConfig, est: dict, parts: tuple, need: float, free: float, where: str):
    names = {
        "parameters": "parameters",
        "optimizer": "optimizer state",
        "gradients": "gradients",
        "activations": "activations of one microbatch",
        "batches": "data batches",
    }
    listed = ", ".join(f"{names[p]} {_size(est[p])}" for p in parts)
    raise ConfigError(
        f"{cfg.name}: training needs at least {_size(need)} of {where} ({listed}) but "
        f"{_size(free)} is free; lower train.batch_size (now {cfg.train.batch_size}), raise "
        f"train.grad_accum, or train a smaller model (estimate: jaxscale.core.memory.estimate)"
    )


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:.0f} B"
