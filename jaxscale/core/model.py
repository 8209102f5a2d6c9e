"""Decoder-only transformer in Flax NNX, parameterised by width and depth.

Layer weights are stacked along a leading `layers` axis so the forward pass can
`lax.scan` over depth (one compiled block whatever the depth) or unroll it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxscale.config import ModelConfig
from jaxscale.config import axes as ax
from jaxscale.core import mup
from jaxscale.core.kernels import causal_attention, dense, gelu_tanh
from jaxscale.core.sharding import constrain

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Depths up to this scan fully unrolled (no while loop, no zero-filled residual stacks; same
# per-layer ops and results): compiled in less CPU time than the loop at 2 and 6 layers
# (BENCHMARKS.md); deeper models keep the loop, whose compile does not grow with depth.
UNROLL_MAX_LAYERS = 6


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


def _project(x_BxLxI: jax.Array, w: jax.Array, n_in: int = 1) -> jax.Array:
    """Contract the trailing n_in axes of x with the leading n_in axes of w via `dense`."""
    B, L = x_BxLxI.shape[:2]
    k = math.prod(w.shape[:n_in])
    y = dense(x_BxLxI.reshape(B * L, k), w.reshape(k, -1))
    return y.reshape(B, L, *w.shape[n_in:])


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
        # Hidden matrices: variance ∝ 1/fan_in under μP (Yang et al. 2022 Table 3); 1 under SP.
        hid_std = std * mup.hidden_init_scale(cfg)
        # Residual-branch outputs scaled by 1/sqrt(2L) (Radford et al. 2019, GPT-2 §2.3); L is the
        # base depth under 1/L depth scaling (Dey et al. 2025), whose branch multiplier does the rest.
        out_std = hid_std / math.sqrt(2 * mup.init_depth(cfg))
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
        self.wq = _param(rngs.params(), (L, D, N, H), hid_std, qkv_names, pd)
        self.wk = _param(rngs.params(), (L, D, N, H), hid_std, qkv_names, pd)
        self.wv = _param(rngs.params(), (L, D, N, H), hid_std, qkv_names, pd)
        self.wo = _param(
            rngs.params(), (L, N, H, D), out_std, layer + (ax.HEADS, ax.HEAD_DIM, ax.EMBED), pd
        )
        mlp_names = layer + (ax.EMBED, ax.MLP)
        self.w_in = _param(rngs.params(), (L, D, F), hid_std, mlp_names, pd)
        if cfg.activation == "swiglu":
            self.w_gate = _param(rngs.params(), (L, D, F), hid_std, mlp_names, pd)
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

    def hidden(self, tokens_BxL: jax.Array, *, final_norm: bool = True) -> jax.Array:
        """Final-normed hidden states [B, L, D] in the compute dtype (the residual stream before
        the final norm with final_norm=False: the μP coordinate check's unsaturated view)."""
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
            unroll = cfg.n_layers <= UNROLL_MAX_LAYERS
            x_BxLxD, _ = jax.lax.scan(
                lambda x, p: (block(x, p), None), x_BxLxD, layers, unroll=unroll
            )
        else:
            for i in range(cfg.n_layers):
                x_BxLxD = block(x_BxLxD, {k: v[i] for k, v in layers.items()})
        if not final_norm:
            return x_BxLxD
        bias = self.lnf_bias[...] if cfg.norm == "layernorm" else None
        return _norm(x_BxLxD, self.lnf_scale[...], bias)

    def logits(self, h_BxLxD: jax.Array) -> jax.Array:
        cd = h_BxLxD.dtype
        if self.cfg.tie_embeddings:
            w_DxV = self.embed[...].astype(cd).T
        else:
            w_DxV = self.head[...].astype(cd)
        logits_BxLxV = jnp.einsum("bld,dv->blv", h_BxLxD, w_DxV, preferred_element_type=jnp.float32)
        if (s := mup.logit_scale(self.cfg)) != 1.0:
            # μP readout multiplier 1/m_N (Yang et al. 2022, as their MuReadout); a tied embedding keeps its
            # input-layer init and LR, which μP's readout also wants in this form (nanoGPT-mup).
            logits_BxLxV = logits_BxLxV * s
        return constrain(logits_BxLxV, (ax.BATCH, ax.LENGTH, ax.VOCAB))


def _block_fn(
    cfg: ModelConfig, sin_LxK: jax.Array, cos_LxK: jax.Array
) -> Callable[[jax.Array, dict[str, jax.Array]], jax.Array]:
    """One pre-norm block x + attn(norm(x)) then x + mlp(norm(x)), over one layer's params."""
    cd = _DTYPES[cfg.compute_dtype]
    act_names = (ax.BATCH, ax.LENGTH, ax.EMBED)
    # Residual branches × base_depth/L (CompleteP α = 1, Dey et al. 2025; Bordelon et al. 2023).
    r = mup.residual_scale(cfg)

    def branch(y_BxLxD: jax.Array) -> jax.Array:
        return y_BxLxD if r == 1.0 else y_BxLxD * jnp.asarray(r, y_BxLxD.dtype)

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
        x_BxLxD = x_BxLxD + branch(_project(o_BxLxNxH.reshape(B, T, -1), w["wo"], 2))
        x_BxLxD = constrain(x_BxLxD, act_names)
        h = _norm(x_BxLxD, w["ln2_scale"], w.get("ln2_bias"))
        u_BxLxF = _project(h, w["w_in"])
        if cfg.activation == "swiglu":
            # SwiGLU (Shazeer 2020): silu(x W_gate) * (x W_in).
            u_BxLxF = jax.nn.silu(_project(h, w["w_gate"])) * u_BxLxF
        else:
            u_BxLxF = gelu_tanh(u_BxLxF)
        u_BxLxF = constrain(u_BxLxF, (ax.BATCH, ax.LENGTH, ax.MLP))
        x_BxLxD = x_BxLxD + branch(_project(u_BxLxF, w["w_out"]))
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
