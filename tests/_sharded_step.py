"""Run in a subprocess with 8 simulated CPU devices: the real train step per mesh vs one device."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxscale.config import ModelConfig, RunConfig, TrainConfig  # noqa: E402
from jaxscale.core import sharding as shd  # noqa: E402
from jaxscale.core import train  # noqa: E402

GNS_METRICS = ("loss", "grad_norm", "g_small_sq", "g_big_sq")


def _grad_fn(s: train.Setup):
    loss_fn = lambda p, b: jnp.mean(train.loss_terms(s.graphdef, s.abstract, p, b))
    return jax.jit(jax.value_and_grad(loss_fn), in_shardings=(s.state_shardings["params"], None))


def one_step(cfg, mesh, batch_np):
    s = train.setup(cfg, mesh)
    with jax.set_mesh(mesh):
        state = s.init_fn()
        loss, g = _grad_fn(s)(state["params"], jnp.asarray(batch_np[0]))
        batch = jax.device_put(batch_np, s.batch_sharding)
        state, m = s.step_fn(state, batch)
        return float(loss), jax.device_get(g), jax.device_get(state["params"]), jax.device_get(m)


def gns_step(cfg, mesh, batch_AxBxL1):
    """The real accumulating step's logged metrics (|G_small|^2, |G_big|^2 among them)."""
    s = train.setup(cfg, mesh)
    with jax.set_mesh(mesh):
        _, m = s.step_fn(s.init_fn(), jax.device_put(batch_AxBxL1, s.batch_sharding))
        return {k: float(m[k]) for k in GNS_METRICS}


def gns_reference(cfg, mesh, batch_AxBxL1):
    """|G_small|^2 = mean_i |g_i|^2 and |G_big|^2 = |mean_i g_i|^2 from each microbatch's own
    gradient g_i (McCandlish et al. 2018, App. A.1), in float64."""
    s = train.setup(cfg, mesh)
    with jax.set_mesh(mesh):
        params = s.init_fn()["params"]
        grad = _grad_fn(s)
        g_A = [jax.device_get(grad(params, jnp.asarray(mb))[1]) for mb in batch_AxBxL1]
    flat_AxP = np.stack(
        [np.concatenate([np.ravel(x).astype(np.float64) for x in jax.tree.leaves(g)]) for g in g_A]
    )
    small = float(np.mean(np.sum(flat_AxP**2, axis=1)))
    big = float(np.sum(flat_AxP.mean(0) ** 2))
    return {"g_small_sq": small, "g_big_sq": big}


def main():
    cfg = RunConfig(
        model=ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=256, context_length=32),
        train=TrainConfig(batch_size=16, steps=10, warmup_steps=0, lr=1e-2),
    )
    gns_cfg = cfg.replace(**{"train.grad_accum": 2, "train.gns": True})
    assert len(jax.devices()) == 8
    rng = np.random.default_rng(0)
    batch_np = rng.integers(0, 257, (1, 16, 33)).astype(np.int32)
    gns_batch = rng.integers(0, 257, (2, 8, 33)).astype(np.int32)
    one = shd.make_mesh("data=1", jax.devices()[:1])
    ref = one_step(cfg, one, batch_np)
    gns_ref = gns_reference(gns_cfg, one, gns_batch)
    gns_one = gns_step(gns_cfg, one, gns_batch)
    out = {"gns_one_device": gns_one, "gns_reference": gns_ref}
    for spec in sys.argv[1:]:
        got = one_step(cfg, shd.make_mesh(spec), batch_np)
        gdiff = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(jax.tree.leaves(ref[1]), jax.tree.leaves(got[1]))
        )
        pdiff = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(jax.tree.leaves(ref[2]), jax.tree.leaves(got[2]))
        )
        gmax = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(ref[1]))
        out[spec] = {
            "loss_diff": abs(ref[0] - got[0]),
            "grad_diff": gdiff,
            "grad_max": gmax,
            "param_diff": pdiff,
            "loss": got[0],
            "step_loss_diff": abs(float(ref[3]["loss"]) - float(got[3]["loss"])),
            "gns": gns_step(gns_cfg, shd.make_mesh(spec), gns_batch),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
