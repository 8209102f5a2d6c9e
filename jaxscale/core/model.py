"""Decoder-only transformer in Flax NNX, parameterised by width and depth.

Layer weights are stacked along a leading `layers` axis so the forward pass can
`lax.scan` over depth (one compiled block whatever the depth) or unroll it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxscale.config import ModelConfig
from jaxscale.config import axes as ax
from jaxscale.core.sharding import constrain

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _param(key: jax.Array, shape: tuple[int, ...], std: float, names: tuple, dtype) -> nnx.Param:
    """A normal-initialised parameter carrying logical axis names."""
    value = (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


def _const(shape: tuple[int, ...], fill: float, names: tuple, dtype) -> nnx.Param:
    return nnx.Param(jnp.full(shape, fill, dtype), out_sharding=names, eager_sharding=False)


def _norm(x_BxLxD: jax.Array, scale_D: jax.Array, bias_D: jax.Array | None) -> jax.Array:
    """RMSNorm (Zhang & Sennrich 2019) or LayerNorm (Ba et al. 2016) when a bias is given."""
    x = x_BxLxD.astype(jnp.float32)
    if bias_D is None:
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
        return (x * scale_D).astype(x_BxLxD.dtype)
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
    x = (x - mu) * jax.lax.rsqrt(var + 1e-6)
    return (x * scale_D + bias_D).astype(x_BxLxD.dtype)


def rope_tables(length: int, head_dim: int, base: float) -> tuple[jax.Array, jax.Array]:
    """sin/cos tables [L, head_dim/2] for rotary embeddings (Su et al. 2021, RoFormer)."""
    inv_freq_K = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    ang_LxK = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq_K[None, :]
    return jnp.sin(ang_LxK), jnp.cos(ang_LxK)


def _rope(x_BxLxNxH: jax.Array, sin_LxK: jax.Array, cos_LxK: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
    s, c = sin_LxK[None, :, None, :], cos_LxK[None, :, None, :]
    out = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    return out.astype(x_BxLxNxH.dtype)


@jax.custom_vjp
def dense(x_MxK: jax.Array, w_KxN: jax.Array) -> jax.Array:
    """x @ w whose weight gradient is formed as (dy^T x)^T.

    Same maths as autodiff; the operand order makes XLA:CPU transpose the saved input x (a
    plain copy) instead of writing dy transposed from inside the activation-backward fusion,
    which profiled at ~30% of a 1M-parameter step."""
    return x_MxK @ w_KxN


def _dense_fwd(x, w):
    return x @ w, (x, w)


def _dense_bwd(res, dy_MxN):
    x_MxK, w_KxN = res
    dw_NxK = jax.lax.dot_general(dy_MxN, x_MxK, (((0,), (0,)), ((), ())))
    return (dy_MxN @ w_KxN.T).astype(x_MxK.dtype), dw_NxK.T.astype(w_KxN.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def _project(x_BxLxI: jax.Array, w: jax.Array, n_in: int = 1) -> jax.Array:
    """Contract the trailing n_in axes of x with the leading n_in axes of w via `dense`."""
    B, L = x_BxLxI.shape[:2]
    k = math.prod(w.shape[:n_in])
    y = dense(x_BxLxI.reshape(B * L, k), w.reshape(k, -1))
    return y.reshape(B, L, *w.shape[n_in:])


_GELU_C = math.sqrt(2.0 / math.pi)


@jax.custom_vjp
def gelu_tanh(u: jax.Array) -> jax.Array:
    """tanh-approximate GELU (Hendrycks & Gimpel 2016) saving only its input for backward."""
    return jax.nn.gelu(u, approximate=True)


def _gelu_fwd(u):
    return jax.nn.gelu(u, approximate=True), u


def _gelu_bwd(u, g):
    # d/du 0.5 u (1 + tanh(c (u + a u^3))), a = 0.044715.
    x = u.astype(jnp.float32)
    t = jnp.tanh(_GELU_C * (x + 0.044715 * x**3))
    d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * x * x)
    return ((g.astype(jnp.float32) * d).astype(u.dtype),)


gelu_tanh.defvjp(_gelu_fwd, _gelu_bwd)


def _block_bounds(T: int) -> list[tuple[int, int]]:
    """Query blocks [start, end): 64 rows, or T/8 rows for long contexts (bounds the unroll)."""
    C = max(64, -(-T // 8))
    return [(s, min(s + C, T)) for s in range(0, T, C)]


def _causal_blocks(q_BxNxTxH, k_BxNxTxH, v_BxNxTxH):
    """Blocked causal softmax(q k^T) v: query block [s, e) only sees keys [0, e), so about
    half of the score matrix is never computed (the block-sparse idea of FlashAttention,
    Dao et al. 2022, without the online softmax: a block's keys fit in cache on CPU)."""
    outs, probs = [], []
    for s, e in _block_bounds(q_BxNxTxH.shape[2]):
        sc_BxNxCxE = jnp.einsum(
            "bnqh,bnkh->bnqk",
            q_BxNxTxH[:, :, s:e],
            k_BxNxTxH[:, :, :e],
            preferred_element_type=jnp.float32,
        )
        keep_CxE = jnp.arange(s, e)[:, None] >= jnp.arange(e)[None, :]
        sc_BxNxCxE = jnp.where(keep_CxE, sc_BxNxCxE, jnp.finfo(jnp.float32).min)
        p = jnp.exp(sc_BxNxCxE - jnp.max(sc_BxNxCxE, axis=-1, keepdims=True))
        p = (p / jnp.sum(p, axis=-1, keepdims=True)).astype(v_BxNxTxH.dtype)
        probs.append(p)
        outs.append(jnp.einsum("bnqk,bnkh->bnqh", p, v_BxNxTxH[:, :, :e]))
    return jnp.concatenate(outs, axis=2), probs


@jax.custom_vjp
def blocked_causal_attention(q_BxNxTxH, k_BxNxTxH, v_BxNxTxH):
    """Causal attention on pre-scaled queries in [B, N, T, H] layout (the CPU path)."""
    return _causal_blocks(q_BxNxTxH, k_BxNxTxH, v_BxNxTxH)[0]


def _blocked_fwd(q, k, v):
    o, probs = _causal_blocks(q, k, v)
    return o, (q, k, v, o, probs)


def _blocked_bwd(res, do_BxNxTxH):
    # Softmax backward with the row term sum_k P dP = sum_h dO O (Dao et al. 2022, Alg. 2),
    # an O(T H) reduction instead of O(T^2); probabilities were saved, not recomputed.
    q, k, v, o, probs = res
    T, f32 = q.shape[2], jnp.float32
    delta = jnp.sum(do_BxNxTxH.astype(f32) * o.astype(f32), axis=-1, keepdims=True)
    dq, dk, dv = [], jnp.zeros(k.shape, f32), jnp.zeros(v.shape, f32)
    for (s, e), p in zip(_block_bounds(T), probs):
        do = do_BxNxTxH[:, :, s:e]
        dp = jnp.einsum("bnqh,bnkh->bnqk", do, v[:, :, :e], preferred_element_type=f32)
        ds = (p.astype(f32) * (dp - delta[:, :, s:e])).astype(q.dtype)
        dq.append(jnp.einsum("bnqk,bnkh->bnqh", ds, k[:, :, :e]))
        pad = ((0, 0), (0, 0), (0, T - e), (0, 0))
        dk_i = jnp.einsum("bnqk,bnqh->bnkh", ds, q[:, :, s:e], preferred_element_type=f32)
        dv_i = jnp.einsum("bnqk,bnqh->bnkh", p, do, preferred_element_type=f32)
        dk, dv = dk + jnp.pad(dk_i, pad), dv + jnp.pad(dv_i, pad)
    return jnp.concatenate(dq, axis=2), dk.astype(k.dtype), dv.astype(v.dtype)


blocked_causal_attention.defvjp(_blocked_fwd, _blocked_bwd)


def use_blocked_attention() -> bool:
    """The blocked path is for the CPU backend; GPU/TPU keep jax.nn.dot_product_attention."""
    return jax.default_backend() == "cpu"


def causal_attention(q_BxLxNxH: jax.Array, k_BxLxNxH: jax.Array, v_BxLxNxH: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(H) + causal mask) v (Vaswani et al. 2017), output [B, L, N, H]."""
    if not use_blocked_attention():
        # Fused causal attention: cuDNN/Pallas kernels on GPU/TPU.
        return jax.nn.dot_product_attention(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, is_causal=True)
    scale = 1.0 / math.sqrt(q_BxLxNxH.shape[-1])
    to_bnth = functools.partial(jnp.transpose, axes=(0, 2, 1, 3))
    o = blocked_causal_attention(
        to_bnth(q_BxLxNxH * jnp.asarray(scale, q_BxLxNxH.dtype)),
        to_bnth(k_BxLxNxH),
        to_bnth(v_BxLxNxH),
    )
    return to_bnth(o)


class Transformer(nnx.Module):
    """Pre-norm decoder-only transformer (GPT-2 layout; RoPE, RMSNorm and SwiGLU optional)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = _DTYPES[cfg.param_dtype]
        L, D, N, H, F, V = (
            cfg.n_layers,
            cfg.d_model,
            cfg.n_heads,
            cfg.head_dim,
            cfg.d_ff,
            cfg.padded_vocab,
        )
        std = cfg.init_std
        # Residual-branch outputs scaled by 1/sqrt(2L) (Radford et al. 2019, GPT-2 §2.3).
        out_std = std / math.sqrt(2 * L)
        layer = (ax.LAYERS,)
        self.embed = _param(rngs.params(), (V, D), std, (ax.VOCAB, ax.EMBED), pd)
        if cfg.position == "learned":
            self.pos_embed = _param(
                rngs.params(), (cfg.context_length, D), std, (None, ax.EMBED), pd
            )
        self.ln1_scale = _const((L, D), 1.0, layer + (ax.NORM,), pd)
        self.ln2_scale = _const((L, D), 1.0, layer + (ax.NORM,), pd)
        self.lnf_scale = _const((D,), 1.0, (ax.NORM,), pd)
        if cfg.norm == "layernorm":
            self.ln1_bias = _const((L, D), 0.0, layer + (ax.NORM,), pd)
            self.ln2_bias = _const((L, D), 0.0, layer + (ax.NORM,), pd)
            self.lnf_bias = _const((D,), 0.0, (ax.NORM,), pd)
        qkv_names = layer + (ax.EMBED, ax.HEADS, ax.HEAD_DIM)
        self.wq = _param(rngs.params(), (L, D, N, H), std, qkv_names, pd)
        self.wk = _param(rngs.params(), (L, D, N, H), std, qkv_names, pd)
        self.wv = _param(rngs.params(), (L, D, N, H), std, qkv_names, pd)
        self.wo = _param(
            rngs.params(), (L, N, H, D), out_std, layer + (ax.HEADS, ax.HEAD_DIM, ax.EMBED), pd
        )
        self.w_in = _param(rngs.params(), (L, D, F), std, layer + (ax.EMBED, ax.MLP), pd)
        if cfg.activation == "swiglu":
            self.w_gate = _param(rngs.params(), (L, D, F), std, layer + (ax.EMBED, ax.MLP), pd)
        self.w_out = _param(rngs.params(), (L, F, D), out_std, layer + (ax.MLP, ax.EMBED), pd)
        if not cfg.tie_embeddings:
            self.head = _param(rngs.params(), (D, V), std, (ax.EMBED, ax.VOCAB), pd)

    def _layer_params(self) -> dict[str, jax.Array]:
        names = ["ln1_scale", "ln2_scale", "wq", "wk", "wv", "wo", "w_in", "w_out"]
        names += ["ln1_bias", "ln2_bias"] if self.cfg.norm == "layernorm" else []
        names += ["w_gate"] if self.cfg.activation == "swiglu" else []
        return {n: getattr(self, n)[...] for n in names}

    def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
        """Logits [B, L, V] (float32) for integer tokens [B, L]."""
        return self.logits(self.hidden(tokens_BxL))

    def hidden(self, tokens_BxL: jax.Array) -> jax.Array:
        """Final-normed hidden states [B, L, D] in the compute dtype."""
        cfg = self.cfg
        cd = _DTYPES[cfg.compute_dtype]
        B, T = tokens_BxL.shape
        if T > cfg.context_length:
            raise ValueError(f"sequence length {T} exceeds context_length={cfg.context_length}")
        x_BxLxD = jnp.take(self.embed[...], tokens_BxL, axis=0).astype(cd)
        if cfg.position == "learned":
            x_BxLxD = x_BxLxD + self.pos_embed[...][:T].astype(cd)
        x_BxLxD = constrain(x_BxLxD, (ax.BATCH, ax.LENGTH, ax.EMBED))
        sin, cos = rope_tables(T, cfg.head_dim, cfg.rope_base)
        block = _block_fn(cfg, sin, cos)
        if cfg.remat == "full":
            block = jax.checkpoint(block)
        elif cfg.remat == "dots":
            block = jax.checkpoint(block, policy=jax.checkpoint_policies.dots_saveable)
        layers = self._layer_params()
        if cfg.scan_layers:
            x_BxLxD, _ = jax.lax.scan(lambda x, p: (block(x, p), None), x_BxLxD, layers)
        else:
            for i in range(cfg.n_layers):
                x_BxLxD = block(x_BxLxD, {k: v[i] for k, v in layers.items()})
        bias = self.lnf_bias[...] if cfg.norm == "layernorm" else None
        return _norm(x_BxLxD, self.lnf_scale[...], bias)

    def logits(self, h_BxLxD: jax.Array) -> jax.Array:
        cd = h_BxLxD.dtype
        if self.cfg.tie_embeddings:
            w_DxV = self.embed[...].astype(cd).T
        else:
            w_DxV = self.head[...].astype(cd)
        logits_BxLxV = jnp.einsum("bld,dv->blv", h_BxLxD, w_DxV, preferred_element_type=jnp.float32)
        return constrain(logits_BxLxV, (ax.BATCH, ax.LENGTH, ax.VOCAB))


def _block_fn(
    cfg: ModelConfig, sin_LxK: jax.Array, cos_LxK: jax.Array
) -> Callable[[jax.Array, dict[str, jax.Array]], jax.Array]:
    """One pre-norm block x + attn(norm(x)) then x + mlp(norm(x)), over one layer's params."""
    cd = _DTYPES[cfg.compute_dtype]
    act_names = (ax.BATCH, ax.LENGTH, ax.EMBED)

    def block(x_BxLxD: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
        w = {k: v.astype(cd) for k, v in p.items()}
        B, T = x_BxLxD.shape[:2]
        h = _norm(x_BxLxD, w["ln1_scale"], w.get("ln1_bias"))
        q_BxLxNxH = _project(h, w["wq"])
        k_BxLxNxH = _project(h, w["wk"])
        v_BxLxNxH = _project(h, w["wv"])
        if cfg.position == "rope":
            q_BxLxNxH = _rope(q_BxLxNxH, sin_LxK, cos_LxK)
            k_BxLxNxH = _rope(k_BxLxNxH, sin_LxK, cos_LxK)
        o_BxLxNxH = causal_attention(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH)
        x_BxLxD = x_BxLxD + _project(o_BxLxNxH.reshape(B, T, -1), w["wo"], 2)
        x_BxLxD = constrain(x_BxLxD, act_names)
        h = _norm(x_BxLxD, w["ln2_scale"], w.get("ln2_bias"))
        u_BxLxF = _project(h, w["w_in"])
        if cfg.activation == "swiglu":
            # SwiGLU (Shazeer 2020): silu(x W_gate) * (x W_in).
            u_BxLxF = jax.nn.silu(_project(h, w["w_gate"])) * u_BxLxF
        else:
            u_BxLxF = gelu_tanh(u_BxLxF)
        u_BxLxF = constrain(u_BxLxF, (ax.BATCH, ax.LENGTH, ax.MLP))
        x_BxLxD = x_BxLxD + _project(u_BxLxF, w["w_out"])
        return constrain(x_BxLxD, act_names)

    return block


def init_state(cfg: ModelConfig, seed: int) -> tuple[nnx.GraphDef, nnx.State]:
    """Build the model and split it into (graphdef, param state)."""
    model = Transformer(cfg, rngs=nnx.Rngs(params=seed))
    return nnx.split(model, nnx.Param)


def logical_axes(state: nnx.State) -> dict:
    """Pure-dict tree (same layout as the params) of logical axis-name tuples."""
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        names = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = tuple(names)
    return out


def apply(graphdef: nnx.GraphDef, abstract: nnx.State, params: dict, tokens_BxL: jax.Array):
    """Logits from a pure-dict params tree (the functional form used in jitted steps)."""
    state = jax.tree.map(lambda x: x, abstract)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)(tokens_BxL)
