"""μP and depth-μP multipliers: init, forward and per-parameter Adam LR scales of a ModelConfig.

Width (Yang et al. 2022, "Tensor Programs V", Table 3 for Adam, in the output-multiplier form
of their `mup` package's MuReadout and Cerebras' nanoGPT-mup): with m_N = d_model / base_width,
  hidden matrices (fan_in ∝ width)   init std × m_N^-1/2, Adam LR × 1/m_N
  embeddings, readout, norm gains    init and LR unchanged
  logits                             × 1/m_N
Depth (CompleteP, α = 1: Bordelon et al. 2023; Dey et al. 2025 Table 1): with
m_L = n_layers / base_depth, every residual branch × 1/m_L and its output-projection init uses
base_depth in GPT-2's 1/sqrt(2L); the Adam LR factor m_L^(α-1) of hidden weights and norm gains
is 1 at α = 1. Every factor is 1 at the base shape, so μP there is SP bit for bit.
Attention keeps 1/sqrt(head_dim): `ModelConfig.resized` fixes head_dim (width grows by heads),
so μP's 1/head_dim attention (Yang et al. 2022) would only be a constant factor off the base.
Adam's ε is not scaled (nanoGPT-mup scales it by 1/m_N): gradients here are ≫ 1e-8.
"""

from __future__ import annotations

from jaxscale.config import ModelConfig

# Matrices whose fan-in grows with width: μP's "hidden weights" (Yang et al. 2022 Table 3).
HIDDEN = ("wq", "wk", "wv", "wo", "w_in", "w_gate", "w_out")


def width_mult(cfg: ModelConfig) -> float:
    """m_N = d_model / base_width (1 under SP)."""
    return cfg.d_model / cfg.base_width if cfg.parameterization == "mup" else 1.0


def depth_mult(cfg: ModelConfig) -> float:
    """m_L = n_layers / base_depth (1 without depth scaling)."""
    return cfg.n_layers / cfg.base_depth if cfg.depth_scaling == "1/L" else 1.0


def hidden_init_scale(cfg: ModelConfig) -> float:
    """Hidden-matrix init std factor m_N^-1/2: variance ∝ 1/fan_in (Yang et al. 2022 Table 3)."""
    return width_mult(cfg) ** -0.5


def residual_scale(cfg: ModelConfig) -> float:
    """Residual-branch multiplier 1/m_L (CompleteP α = 1, Dey et al. 2025 Table 1)."""
    return 1.0 / depth_mult(cfg)


def init_depth(cfg: ModelConfig) -> int:
    """The L in GPT-2's out-projection std/sqrt(2L): base_depth under depth scaling, whose
    1/m_L branch multiplier already does the rest (Dey et al. 2025: init depth-independent)."""
    return cfg.base_depth if cfg.depth_scaling == "1/L" else cfg.n_layers


def logit_scale(cfg: ModelConfig) -> float:
    """Output multiplier 1/m_N on the logits (Yang et al. 2022; their mup package's MuReadout)."""
    return 1.0 / width_mult(cfg)


def lr_multipliers(cfg: ModelConfig) -> dict[str, float]:
    """Adam LR factor per parameter name: 1/m_N for hidden matrices (Yang et al. 2022 Table 3)
    times m_L^(α-1) = 1 (CompleteP α = 1); 1 for embeddings, readout and norm gains/biases."""
    hidden = 1.0 / width_mult(cfg)
    return {n: hidden for n in HIDDEN}


def is_identity(cfg: ModelConfig) -> bool:
    """True when every multiplier is 1 (SP, or μP/depth-μP at the base shape)."""
    return width_mult(cfg) == 1.0 and depth_mult(cfg) == 1.0
