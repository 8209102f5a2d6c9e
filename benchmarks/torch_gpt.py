"""The jaxscale GPT in PyTorch (benchmark-only reference; same shapes, init, AdamW and clipping).

Matches jaxscale.model.Transformer's default layout: pre-norm RMSNorm (Zhang & Sennrich 2019),
RoPE (Su et al. 2021), tanh GELU, tied embeddings, no biases, causal fused SDPA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from jaxscale.config import ModelConfig, TrainConfig


class _RMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale


def _rope(x_BxNxLxH: torch.Tensor, sin_LxK: torch.Tensor, cos_LxK: torch.Tensor) -> torch.Tensor:
    x1, x2 = x_BxNxLxH.chunk(2, dim=-1)
    return torch.cat([x1 * cos_LxK - x2 * sin_LxK, x2 * cos_LxK + x1 * sin_LxK], dim=-1)


class _Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D, F_ = cfg.d_model, cfg.d_ff
        self.n, self.h = cfg.n_heads, cfg.head_dim
        self.ln1, self.ln2 = _RMSNorm(D), _RMSNorm(D)
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.proj = nn.Linear(D, D, bias=False)
        self.fc_in = nn.Linear(D, F_, bias=False)
        self.fc_out = nn.Linear(F_, D, bias=False)

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.n, self.h).permute(2, 0, 3, 1, 4)
        q, k = _rope(q, sin, cos), _rope(k, sin, cos)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(o.transpose(1, 2).reshape(B, L, D))
        return x + self.fc_out(F.gelu(self.fc_in(self.ln2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    """Decoder-only transformer with the same parameter count as the jaxscale model."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.norm != "rmsnorm" or cfg.position != "rope" or cfg.activation != "gelu":
            raise ValueError("TorchGPT mirrors the default rmsnorm/rope/gelu layout only")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.padded_vocab, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.lnf = _RMSNorm(cfg.d_model)
        std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
        for name, p in self.named_parameters():
            if p.ndim == 2:
                nn.init.normal_(
                    p, std=out_std if name.endswith(("proj.weight", "fc_out.weight")) else std
                )
        H = cfg.head_dim
        inv = cfg.rope_base ** (-torch.arange(0, H, 2, dtype=torch.float32) / H)
        ang = torch.arange(cfg.context_length, dtype=torch.float32)[:, None] * inv[None]
        self.register_buffer("sin", ang.sin(), persistent=False)
        self.register_buffer("cos", ang.cos(), persistent=False)

    def forward(self, tokens_BxL: torch.Tensor) -> torch.Tensor:
        L = tokens_BxL.shape[1]
        x = self.embed(tokens_BxL)
        sin, cos = self.sin[:L], self.cos[:L]
        for blk in self.blocks:
            x = blk(x, sin, cos)
        return self.lnf(x) @ self.embed.weight.T


def make_step(cfg: ModelConfig, tc: TrainConfig, seed: int = 0):
    """(model, step(tokens_BxL1) -> loss tensor) with AdamW + global-norm clipping."""
    torch.manual_seed(seed)
    model = TorchGPT(cfg)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": tc.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=tc.lr,
        betas=(tc.beta1, tc.beta2),
        eps=tc.eps,
    )

    def step(tokens_BxL1: torch.Tensor) -> torch.Tensor:
        logits = model(tokens_BxL1[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens_BxL1[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        return loss.detach()

    return model, step
