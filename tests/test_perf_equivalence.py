"""The CPU fast paths (blocked attention, dense and GELU custom VJPs) equal the plain maths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxscale.config import ModelConfig
from jaxscale.core import kernels, model


def _qkv(T, N=2, H=16, B=2, dtype=jnp.float32, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    return [jax.random.normal(k, (B, T, N, H), jnp.float32).astype(dtype) for k in ks]


def _blocked(q, k, v):
    """The CPU path whatever the backend."""
    scale = 1.0 / np.sqrt(q.shape[-1])
    t = lambda x: jnp.transpose(x, (0, 2, 1, 3))
    return t(kernels.blocked_causal_attention(t(q * scale), t(k), t(v)))


def _reference(q, k, v):
    T, H = q.shape[1], q.shape[-1]
    s = jnp.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(H)
    s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -jnp.inf)
    return jnp.einsum("bnqk,bknh->bqnh", jax.nn.softmax(s, axis=-1), v)


@pytest.mark.parametrize("T", [1, 37, 64, 130, 256, 600])
def test_blocked_attention_matches_reference_values_and_grads(T):
    q, k, v, g = _qkv(T)
    np.testing.assert_allclose(_blocked(q, k, v), _reference(q, k, v), atol=2e-6, rtol=1e-5)
    loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * g)
    got = jax.grad(loss(_blocked), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(_reference), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_blocked_attention_block_bounds_cover_and_skip_masked_blocks():
    bounds = kernels._block_bounds(600)
    assert bounds[0][0] == 0 and bounds[-1][1] == 600
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert len(kernels._block_bounds(256)) == 4  # 64-row blocks: 10/16 of the scores computed
    assert len(bounds) <= 8  # long contexts: unroll stays bounded


def test_blocked_attention_is_causal_in_grads():
    """dq at position t and dk/dv beyond it get nothing from later outputs."""
    q, k, v, _ = _qkv(130)
    t = 70

    def f(q, k, v):
        return jnp.sum(_blocked(q, k, v)[:, : t + 1] ** 2)

    _, dk, dv = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
    assert np.all(np.asarray(dk[:, t + 1 :]) == 0) and np.all(np.asarray(dv[:, t + 1 :]) == 0)
    assert np.any(np.asarray(dk[:, : t + 1]) != 0)


def test_blocked_attention_bf16_close_to_f32():
    q, k, v, _ = _qkv(256, dtype=jnp.bfloat16)
    got = _blocked(q, k, v).astype(jnp.float32)
    want = _reference(*(x.astype(jnp.float32) for x in (q, k, v)))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=3e-2)


def test_dense_and_gelu_vjps_equal_autodiff():
    ks = jax.random.split(jax.random.key(3), 3)
    x, w = jax.random.normal(ks[0], (33, 20)), jax.random.normal(ks[1], (20, 7))
    g = jax.random.normal(ks[2], (33, 7))
    got = jax.grad(lambda x, w: jnp.sum(kernels.dense(x, w) * g), argnums=(0, 1))(x, w)
    want = jax.grad(lambda x, w: jnp.sum((x @ w) * g), argnums=(0, 1))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    u = jnp.linspace(-6, 6, 1001)
    np.testing.assert_allclose(
        jax.grad(lambda u: jnp.sum(kernels.gelu_tanh(u)))(u),
        jax.grad(lambda u: jnp.sum(jax.nn.gelu(u, approximate=True)))(u),
        atol=1e-6,
    )


@pytest.mark.parametrize("kw", [{}, {"activation": "swiglu", "norm": "layernorm"}])
def test_model_cpu_path_equals_fused_attention_path(monkeypatch, kw):
    """Whole-model logits and grads: blocked CPU path vs jax.nn.dot_product_attention."""
    assert kernels.use_blocked_attention() == (jax.default_backend() == "cpu")
    cfg = ModelConfig.from_width_depth(64, 2, head_dim=16, context_length=96, **kw)
    gd, st = model.init_state(cfg, 0)
    tok = jax.random.randint(jax.random.key(1), (2, 96), 0, 257)

    def run(blocked):
        monkeypatch.setattr(kernels, "use_blocked_attention", lambda: blocked)

        def loss(st):
            return jnp.mean(nnx.merge(gd, st)(tok) ** 2)

        return jax.value_and_grad(loss)(st)

    (l1, g1), (l0, g0) = run(True), run(False)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)


def test_unrolled_scan_equals_scanned_layers(monkeypatch):
    """Shallow models unroll the layer scan (model.UNROLL_MAX_LAYERS): same logits and grads
    as the while-loop scan."""
    cfg = ModelConfig.from_width_depth(32, 3, head_dim=16, context_length=64)
    gd, st = model.init_state(cfg, 0)
    tok = jax.random.randint(jax.random.key(2), (2, 64), 0, 257)

    def run(max_layers):
        monkeypatch.setattr(model, "UNROLL_MAX_LAYERS", max_layers)
        return jax.jit(jax.value_and_grad(lambda st: jnp.mean(nnx.merge(gd, st)(tok) ** 2)))(st)

    (l1, g1), (l0, g0) = run(3), run(0)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
