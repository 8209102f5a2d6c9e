"""The train step applies AdamW with the logged LR schedule exactly once, as optax.adamw does."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxscale.config import ModelConfig, RunConfig, TrainConfig
from jaxscale.core import model as model_lib
from jaxscale.core import train


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_step_equals_optax_adamw_with_the_logged_schedule(schedule):
    """Loshchilov & Hutter 2019 AdamW, coupled decay η_t·λ·p: the step's params track optax.adamw
    driven by peak LR × the schedule (built from optax's schedules), and the logged `lr` is that
    schedule."""
    mc = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, context_length=8, vocab_size=32)
    tc = TrainConfig(
        batch_size=4, steps=12, warmup_steps=4, lr=3e-2, schedule=schedule, weight_decay=0.3
    )
    cfg = RunConfig(model=mc, train=tc)
    graphdef, abstract = model_lib.init_state(mc, 0)
    tx = train.make_optimizer(tc, mc)
    step = jax.jit(train.build_step(cfg, graphdef, abstract))
    params = nnx.to_pure_dict(abstract)
    state = {
        "params": params,
        "opt": tx.init(params),
        "step": jnp.int32(0),
        "lr": jnp.float32(tc.lr),
    }

    sched = _optax_schedule(tc)  # an independent check of the step's traced schedule
    numbers = train.step_numbers(tc)
    ref_tx = optax.chain(
        optax.clip_by_global_norm(tc.grad_clip),
        optax.adamw(
            lambda t: tc.lr * sched(t),
            b1=tc.beta1,
            b2=tc.beta2,
            eps=tc.eps,
            weight_decay=tc.weight_decay,
            mask=lambda p: {k: not k.endswith(("_scale", "_bias")) for k in p},
        ),
    )
    ref_params, ref_opt = params, ref_tx.init(params)

    def loss(p, toks):
        return jnp.mean(train.loss_terms(graphdef, abstract, p, toks))

    rng = np.random.default_rng(0)
    for t in range(tc.steps):
        toks = jnp.asarray(rng.integers(0, 32, (1, 4, 9)), jnp.int32)
        state, m = step(state, toks, numbers)
        g = jax.grad(loss)(ref_params, toks[0])
        u, ref_opt = ref_tx.update(g, ref_opt, ref_params)
        ref_params = optax.apply_updates(ref_params, u)
        np.testing.assert_allclose(float(m["lr"]), tc.lr * float(sched(t)), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ref_params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_weight_decay_spares_every_norm_gain_and_bias(norm):
    """Stacked per-layer norm scales are [L, D]: decay is chosen by name, not by ndim."""
    mc = ModelConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32, vocab_size=32, norm=norm)
    params = nnx.to_pure_dict(model_lib.init_state(mc, 0)[1])
    tx = train.make_optimizer(TrainConfig(weight_decay=0.5, grad_clip=0.0), mc)
    u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    for name, p in params.items():
        spared = name.endswith(("_scale", "_bias"))
        np.testing.assert_allclose(u[name], 0.0 if spared else 0.5 * p, atol=1e-12)
    assert any(n.endswith("_scale") and p.ndim == 2 for n, p in params.items())


def _optax_schedule(tc: TrainConfig) -> optax.Schedule:
    """The schedule as the kit built it from optax until it became data (training semantics 2)."""
    w, n, floor = tc.warmup_steps, tc.steps, tc.min_lr_ratio
    if tc.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, w, max(n, w + 1), end_value=floor)
    warm = optax.linear_schedule(0.0, 1.0, max(w, 1))
    if tc.schedule == "constant":
        return optax.join_schedules([warm, optax.constant_schedule(1.0)], [w])
    start = tc.decay_start
    if tc.cooldown_shape == "1-sqrt":
        n_cool = max(n - start, 1)

        def decay(t):
            x = jnp.clip(jnp.asarray(t, jnp.float32) / n_cool, 0.0, 1.0)
            return floor + (1.0 - floor) * (1.0 - jnp.sqrt(x))

    else:
        decay = optax.linear_schedule(1.0, floor, n - start)
    return optax.join_schedules([warm, optax.constant_schedule(1.0), decay], [w, start])


def test_traced_schedule_equals_optax_to_float32_rounding():
    """One compiled schedule for every run (its numbers are data) computes the optax schedules
    it replaced, to float32 rounding (not bit for bit: hence training semantics 3)."""
    rng = np.random.default_rng(0)
    one_program = jax.jit(jax.vmap(train.schedule_at, in_axes=(0, None)))
    for i in range(36):  # each optax schedule compiles its own program: ~0.35 s apiece
        n = int(rng.integers(2, 4000))
        tc = TrainConfig(
            schedule=("cosine", "constant", "wsd")[i % 3],
            steps=n,
            warmup_steps=int(rng.integers(0, max(n // 4, 1))),
            min_lr_ratio=float(rng.choice([0.0, 0.1, 0.05, rng.uniform(0, 0.5)])),
            decay_fraction=float(rng.uniform(0.05, 0.5)),
            cooldown_shape=("linear", "1-sqrt")[i % 2],
        )
        t = jnp.arange(n + 2, dtype=jnp.int32)
        old = jax.jit(jax.vmap(_optax_schedule(tc)))(t)
        new = one_program(t, jnp.asarray(train.step_numbers(tc)))
        np.testing.assert_allclose(new, old, rtol=2e-6, atol=2e-7, err_msg=str(tc))
