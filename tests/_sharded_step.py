"""Run in a subprocess with 8 simulated CPU devices: one train step per mesh vs one device."""

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


def one_step(cfg, mesh, batch_np):
    s = train.setup(cfg, mesh)
    with jax.set_mesh(mesh):
        state = s.init_fn()
        loss_fn = lambda p, b: jnp.mean(train._loss_terms(s.graphdef, s.abstract, p, b))
        grad = jax.jit(
            jax.value_and_grad(loss_fn),
            in_shardings=(s.state_shardings["params"], None),
        )
        loss, g = grad(state["params"], jnp.asarray(batch_np[0]))
        batch = jax.device_put(batch_np, s.batch_sharding)
        state, m = s.step_fn(state, batch)
        return float(loss), jax.device_get(g), jax.device_get(state["params"]), jax.device_get(m)


def main():
    cfg = RunConfig(
        model=ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=256, context_length=32),
        train=TrainConfig(batch_size=16, steps=10, warmup_steps=0, lr=1e-2),
    )
    assert len(jax.devices()) == 8
    rng = np.random.default_rng(0)
    batch_np = rng.integers(0, 257, (1, 16, 33)).astype(np.int32)
    ref = one_step(cfg, shd.make_mesh("data=1", jax.devices()[:1]), batch_np)
    out = {}
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
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
