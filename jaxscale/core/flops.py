"""FLOP accounting: analytic counts under named conventions, XLA's count, device peaks and MFU.

Every convention is itemised as FORWARD FLOPs PER TOKEN (per-sequence formulas such as
Hoffmann et al. 2022 App. F are divided by the sequence length S). Training FLOPs per token
are forward x (1 + BACKWARD_FACTOR) = 3x forward: the backward pass costs two matmuls per
forward matmul (input and weight gradients; Kaplan et al. 2020 §2.1, Hoffmann et al. 2022 App. F).

This module is pure python except `xla_flops`, `measure_matmul_peak`, `device_peak_flops`
which import jax lazily (the XLA count of the real train step is `train.xla_train_step_flops`), so pricing a run under every convention
(`all_flops_per_token(cfg) * tokens`) is cheap.
"""

from __future__ import annotations

import difflib
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp

from jaxscale.config import ConfigError, ModelConfig, RunConfig

BACKWARD_FACTOR = 2.0

CONVENTIONS: tuple[str, ...] = (
    "kaplan",
    "kaplan_attn",
    "palm",
    "chinchilla",
    "chinchilla_noembed",
    "exact",
    "exact_causal",
)

_DESCRIPTIONS = {
    "kaplan": "6N, N = non-embedding params (Kaplan et al. 2020 eq. 2.1, Table 1)",
    "kaplan_attn": "6N + 6 L T d_attn: Kaplan Table 1 forward 2N + 2 n_layer n_ctx d_attn, x3",
    "palm": "6N + 12 L H Q T (Chowdhery et al. 2022, PaLM App. B)",
    "chinchilla": "Hoffmann et al. 2022 App. F incl. embedding and final logits, x3",
    "chinchilla_noembed": "Hoffmann et al. 2022 App. F without embedding and final logits, x3",
    "exact": "jaxscale's architecture op by op, full (unmasked) T x T attention, x3",
    "exact_causal": "as exact but causal attention halved: (T+1)/2 keys per query on average",
}

# Per-element op counts as XLA's HloCostAnalysis counts them: add/mul/sub/div/compare/select and
# reductions cost 1 FLOP per element; transcendentals (exp, tanh, rsqrt, logistic) are tallied
# separately by XLA and are NOT in its `flops`, so they are not counted here either.
_RMSNORM_PER_ELEM = 4  # x*x, mean-reduce, x*rsqrt, *scale (model._norm)
_LAYERNORM_PER_ELEM = 8  # mean, x-mu, square, mean, *rsqrt, *scale, +bias (model._norm)
_ROPE_PER_ELEM = 3  # 6 ops per rotated pair: x1*c - x2*s, x2*c + x1*s (model._rope)
_GELU_TANH_PER_ELEM = 8  # 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3))), tanh excluded
_SWIGLU_PER_ELEM = 5  # silu(g) = g*sigmoid(g): 1 (+ XLA's logistic expansion) and the product
_SOFTMAX_PER_SCORE = 5  # scale, max-reduce, subtract, sum-reduce, divide (exp excluded)
_CAUSAL_SELECT_PER_SCORE = 1  # where(mask, s, -inf) per head; the mask itself is per (query, key)
_XENT_PER_LOGIT = 3  # log-softmax: max, subtract, sum (optax softmax_cross_entropy)
# AdamW update as optax.adamw executes it per parameter: m (3), v (4), bias corrections (2),
# +eps and divide (2), weight decay (2), learning rate (1), apply_updates (1) = 15; global-norm
# clipping (optax.clip_by_global_norm) adds square, reduce-add, scale, select (5 as compiled).
_ADAMW_PER_PARAM = 15
_CLIP_PER_PARAM = 5


def check_convention(name: str) -> str:
    """`name` if it is a FLOP convention; otherwise a ConfigError naming the closest one."""
    if name in CONVENTIONS:
        return name
    close = difflib.get_close_matches(str(name), CONVENTIONS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"unknown FLOP convention {name!r}; {hint}choose one of {', '.join(CONVENTIONS)}"
    )


def _seq(cfg: ModelConfig, seq_len: int | None) -> int:
    T = cfg.context_length if seq_len is None else seq_len
    if not isinstance(T, int) or isinstance(T, bool) or T <= 0:
        raise ValueError(f"seq_len must be a positive int (tokens per sequence), got {T!r}")
    return T


def _n_mlp_mats(cfg: ModelConfig) -> int:
    return 3 if cfg.activation == "swiglu" else 2


def _kaplan_items(cfg: ModelConfig) -> list[tuple[str, float]]:
    """Forward 2N split as Kaplan et al. 2020 Table 1, plus the norm gains the config's N holds."""
    L, D, F = cfg.n_layers, cfg.d_model, cfg.d_ff
    mats = 2 * L * (4 * D * D + _n_mlp_mats(cfg) * D * F)
    return [
        ("attn qkv (2 L d 3 d_attn)", 2.0 * L * 3 * D * D),
        ("attn project (2 L d_attn d)", 2.0 * L * D * D),
        (f"feedforward (2 L {_n_mlp_mats(cfg)} d d_ff)", 2.0 * L * _n_mlp_mats(cfg) * D * F),
        ("norm gains (2 x norm params)", 2.0 * cfg.n_params_nonembedding - mats),
    ]


def _chinchilla_items(cfg: ModelConfig, T: int, embed: bool) -> list[tuple[str, float]]:
    """Hoffmann et al. 2022 App. F, forward per sequence of length S, divided by S.

    d = d_model, k*h = n_heads*head_dim, ffw = d_ff, V = padded_vocab (the rows actually
    multiplied). The dense block is 2 S (2 d ffw) for two matrices; SwiGLU's third matrix is
    counted the same way (2 S (3 d ffw)), which App. F does not cover.
    """
    S, d, V, L, h = T, cfg.d_model, cfg.padded_vocab, cfg.n_layers, cfg.n_heads
    kh = cfg.n_heads * cfg.head_dim
    per_seq = [
        ("attn qkv projections (2 3 S d kh)", 2 * 3 * S * d * kh),
        ("attn key@query logits (2 S^2 kh)", 2 * S * S * kh),
        ("attn softmax (3 h S^2)", 3 * h * S * S),
        ("attn softmax@value (2 S^2 kh)", 2 * S * S * kh),
        ("attn output projection (2 S kh d)", 2 * S * kh * d),
        (f"dense block (2 S {_n_mlp_mats(cfg)} d ffw)", 2 * S * _n_mlp_mats(cfg) * d * cfg.d_ff),
    ]
    items = [(n, float(L * f) / S) for n, f in per_seq]
    if embed:
        items.insert(0, ("embeddings (2 S V d)", 2.0 * S * V * d / S))
        items.append(("final logits (2 S d V)", 2.0 * S * d * V / S))
    return items


def _exact_items(cfg: ModelConfig, T: int, halved: bool) -> list[tuple[str, float]]:
    """Every op of model.Transformer + the cross-entropy, forward, per token (XLA's counting)."""
    L, D, F, V, Nh = cfg.n_layers, cfg.d_model, cfg.d_ff, cfg.padded_vocab, cfg.n_heads
    # Keys seen per query: T when the full score matrix is computed and masked (what
    # jax.nn.dot_product_attention's XLA path does), (T+1)/2 when masked blocks are skipped.
    K = (T + 1) / 2 if halved else float(T)
    if cfg.norm == "layernorm":
        norm = _LAYERNORM_PER_ELEM * D + 2  # + two per-row 1/D scalings
    else:
        norm = _RMSNORM_PER_ELEM * D + 1
    act = _SWIGLU_PER_ELEM if cfg.activation == "swiglu" else _GELU_TANH_PER_ELEM
    # Causal mask: a select per head and score, plus the iota-compare per (query, key).
    softmax = (_SOFTMAX_PER_SCORE + _CAUSAL_SELECT_PER_SCORE) * Nh * K + K
    per_layer = [
        ("norms (2 per layer)", 2 * norm),
        ("attn q,k,v projections (2 3 d^2)", 2 * 3 * D * D),
        ("attn q@k logits (2 K d)", 2 * K * D),
        ("attn softmax + causal mask", softmax),
        ("attn probs@v (2 K d)", 2 * K * D),
        ("attn output projection (2 d^2)", 2 * D * D),
        (f"mlp matmuls (2 {_n_mlp_mats(cfg)} d d_ff)", 2 * _n_mlp_mats(cfg) * D * F),
        (f"mlp {cfg.activation}", act * F),
        ("residual adds (2 d)", 2 * D),
    ]
    if cfg.position == "rope":
        per_layer.insert(2, ("rope on q,k (2 3 d)", 2 * _ROPE_PER_ELEM * D))
    items: list[tuple[str, float]] = [("token embedding (gather, no FLOPs)", 0.0)]
    if cfg.position == "learned":
        items.append(("learned position add (d)", float(D)))
    items += [(f"{name} x{L} layers", float(L * f)) for name, f in per_layer]
    items += [
        ("final norm", float(norm)),
        ("output logits (2 d V)", 2.0 * D * V),
        ("cross-entropy (3 V)", float(_XENT_PER_LOGIT * V)),
    ]
    return items


@functools.lru_cache(maxsize=4096)
def _itemise_cached(cfg: ModelConfig, convention: str, T: int) -> tuple[tuple[str, float], ...]:
    L, D, H, Q = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim
    if convention == "kaplan":
        items = _kaplan_items(cfg)
    elif convention == "kaplan_attn":
        items = _kaplan_items(cfg) + [("attn mask/QK context (2 L n_ctx d_attn)", 2.0 * L * T * D)]
    elif convention == "palm":
        # 12 L H Q T is training; its forward third is QK^T plus AV over full T keys.
        items = _kaplan_items(cfg) + [("attention QK^T + AV (4 L H Q T)", 4.0 * L * H * Q * T)]
    elif convention == "chinchilla":
        items = _chinchilla_items(cfg, T, embed=True)
    elif convention == "chinchilla_noembed":
        items = _chinchilla_items(cfg, T, embed=False)
    else:  # exact, exact_causal (itemise has checked the name)
        items = _exact_items(cfg, T, halved=convention == "exact_causal")
    return tuple(items)


def itemise(
    cfg: ModelConfig, convention: str, seq_len: int | None = None
) -> list[tuple[str, float]]:
    """FORWARD FLOPs per token, item by item; training total = 3 x sum (see flops_per_token)."""
    return list(_itemise_cached(cfg, check_convention(convention), _seq(cfg, seq_len)))


def forward_flops_per_token(
    cfg: ModelConfig, convention: str = "kaplan_attn", seq_len: int | None = None
) -> float:
    """Forward-pass FLOPs per token under a convention."""
    return math.fsum(f for _, f in itemise(cfg, convention, seq_len))


def flops_per_token(
    cfg: ModelConfig, convention: str = "kaplan_attn", seq_len: int | None = None
) -> float:
    """Training (forward + backward) FLOPs per token; backward = 2 x forward."""
    return (1.0 + BACKWARD_FACTOR) * forward_flops_per_token(cfg, convention, seq_len)


def all_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> dict[str, float]:
    """Training FLOPs per token under every convention."""
    return {c: flops_per_token(cfg, c, seq_len) for c in CONVENTIONS}


def optimizer_flops(cfg: ModelConfig, grad_clip: bool = True) -> float:
    """FLOPs of one AdamW update (optax.adamw, optionally after global-norm clipping), per step."""
    return float(cfg.n_params * (_ADAMW_PER_PARAM + (_CLIP_PER_PARAM if grad_clip else 0)))


def step_flops(run: RunConfig, convention: str = "exact", optimizer: bool = True) -> float:
    """Training FLOPs of one optimizer step: tokens_per_step x per-token count (+ AdamW)."""
    c = flops_per_token(run.model, convention) * run.tokens_per_step
    if optimizer:
        c += optimizer_flops(run.model, grad_clip=run.train.grad_clip > 0)
    return c


# --------------------------------------------------------------------------- XLA's count


def xla_flops(compiled: Any, per_device: bool = False) -> float:
    """FLOPs of a compiled executable from `cost_analysis()` (dict, or list of dicts in old JAX).

    Under an SPMD mesh XLA analyses the partitioned per-device program, so the figure is per
    device; unless per_device, it is multiplied by the number of devices the program runs on.
    XLA counts a while-loop (lax.scan) body ONCE, not trip-count times: lower with
    scan_layers=False and grad_accum=1 (see train.xla_train_step_flops) for a whole-step count.
    """
    ca = compiled.cost_analysis()
    if ca is None:
        raise ValueError("this backend's compiled.cost_analysis() returned None; no XLA count")
    parts = ca if isinstance(ca, (list, tuple)) else [ca]
    flops = math.fsum(float(p.get("flops", 0.0)) for p in parts if p)
    if flops <= 0:
        raise ValueError(f"cost_analysis() has no positive 'flops' entry: {list(parts[0])[:8]}")
    return flops if per_device else flops * _n_devices(compiled)


def _n_devices(compiled: Any) -> int:

    try:
        leaves = jax.tree.leaves(compiled.input_shardings)
    except Exception:
        return 1
    return max((len(s.device_set) for s in leaves if hasattr(s, "device_set")), default=1)


# --------------------------------------------------------------------------- peaks and MFU

# Dense (no structured sparsity) peak FLOP/s per chip/GPU, by dtype. Sources:
#   TPU v4  https://cloud.google.com/tpu/docs/v4   (275 TFLOPS bf16)
#   TPU v5e https://cloud.google.com/tpu/docs/v5e  (197 TFLOPS bf16)
#   TPU v5p https://cloud.google.com/tpu/docs/v5p  (459 TFLOPS bf16)
#   TPU v6e https://cloud.google.com/tpu/docs/v6e  (918 TFLOPS bf16)
#   A100    https://www.nvidia.com/en-us/data-center/a100/  (312 bf16, 156 tf32, 19.5 fp32)
#   H100    https://www.nvidia.com/en-us/data-center/h100/  (SXM 989 bf16, 495 tf32, 67 fp32;
#           PCIe 756 bf16, 378 tf32, 51 fp32; the sheet's 2x figures are with sparsity)
#   H200    https://www.nvidia.com/en-us/data-center/h200/  (SXM: same as H100 SXM)
# TPUs publish no fp32 figure (f32 matmuls run as multi-pass bf16 on the MXU), so none is given.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "TPU v4": {"bfloat16": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12},
    "TPU v5p": {"bfloat16": 459e12},
    "TPU v6 lite": {"bfloat16": 918e12},
    "A100": {"bfloat16": 312e12, "tfloat32": 156e12, "float32": 19.5e12},
    "H100 PCIe": {"bfloat16": 756e12, "tfloat32": 378e12, "float32": 51e12},
    "H100": {"bfloat16": 989e12, "tfloat32": 495e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "tfloat32": 495e12, "float32": 67e12},
}
# device_kind strings as JAX reports them -> table key (most specific first).
_KIND_ALIASES = (
    ("tpu v5 lite", "TPU v5 lite"),
    ("tpu v5e", "TPU v5 lite"),
    ("tpu v5p", "TPU v5p"),
    ("tpu v5", "TPU v5p"),
    ("tpu v6 lite", "TPU v6 lite"),
    ("tpu v6e", "TPU v6 lite"),
    ("tpu v4", "TPU v4"),
    ("h100 pcie", "H100 PCIe"),
    ("h100", "H100"),
    ("h200", "H200"),
    ("a100", "A100"),
)


def lookup_peak(device_kind: str, dtype: str = "float32") -> float | None:
    """Published dense peak FLOP/s for a JAX device_kind and dtype, or None if not tabled."""
    kind = device_kind.lower()
    for alias, key in _KIND_ALIASES:
        if alias in kind:
            return PEAK_FLOPS[key].get(dtype)
    return None


_MEASURED: dict[tuple[int, str], float] = {}


def measure_matmul_peak(n: int = 2048, dtype: Any = None, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of a jitted n x n x n matmul on the default device (2 n^3 FLOPs)."""

    dt = jnp.dtype(jnp.float32 if dtype is None else dtype)
    key = (n, dt.name)
    if key in _MEASURED:
        return _MEASURED[key]
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(kb, (n, n), jnp.float32).astype(dt)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, b).block_until_ready()  # compile + warm up
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    _MEASURED[key] = 2.0 * n**3 / best
    return _MEASURED[key]


def device_peak_flops(dtype: str = "float32") -> tuple[float, str]:
    """(peak FLOP/s of one device, source): the vendor table if known, else a measured matmul."""

    kind = jax.devices()[0].device_kind
    peak = lookup_peak(kind, dtype)
    if peak is not None:
        return peak, f"published {dtype} peak for {kind!r}"
    n = 2048
    measured = measure_matmul_peak(n, dtype)
    return measured, f"measured {n}^3 {dtype} matmul on {kind!r} (best of 5)"


def mfu(
    tokens_per_s: float,
    cfg: ModelConfig,
    n_devices: int = 1,
    dtype: str = "float32",
    convention: str = "exact",  # the convention training logs MFU with, so the two agree
    peak: float | None = None,
) -> float:
    """Model FLOPs utilisation: training FLOP/s of the model over n_devices x device peak."""
    if peak is None:
        peak, _ = device_peak_flops(dtype)
    return tokens_per_s * flops_per_token(cfg, convention) / (n_devices * peak)
