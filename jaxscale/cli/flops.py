"""`jaxscale flops`: price a model under every FLOP convention, and XLA's count of the real step."""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

from jaxscale.config import RunConfig, load_config
from jaxscale.core import flops, train


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale flops` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "flops",
        help="price a model under every FLOP convention (and XLA's count)",
        description="Itemised FLOPs per token, per-convention totals, ratio to 6ND, and "
        "optionally the compiled train step's XLA count.",
    )
    p.add_argument("--config", default=None, help="run config YAML/JSON (default: built-in)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. model.d_model=256 (repeatable)",
    )
    p.add_argument(
        "--width", type=int, default=None, help="d_model (heads and d_ff follow the base model)"
    )
    p.add_argument("--depth", type=int, default=None, help="n_layers (with --width)")
    p.add_argument("--tokens", type=float, default=None, help="training tokens D (default: run's)")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length (default: context)")
    p.add_argument(
        "--convention",
        default="exact",
        help=f"itemised convention: {', '.join(flops.CONVENTIONS)}",
    )
    p.add_argument("--xla", action="store_true", help="compile the real train step and compare")
    return p


def _model_from_args(run: RunConfig, width: int | None, depth: int | None) -> RunConfig:
    if width is None and depth is None:
        return run
    m = run.model
    return dataclasses.replace(run, model=m.resized(width or m.d_model, depth or m.n_layers))


def _fmt(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.4e}"


def format_report(
    run: RunConfig,
    convention: str = "exact",
    tokens: float | None = None,
    seq_len: int | None = None,
) -> str:
    """The text `jaxscale flops` prints (without the XLA section)."""
    cfg = run.model
    T = flops._seq(cfg, seq_len)
    D = float(run.total_tokens if tokens is None else tokens)
    items = flops.itemise(cfg, convention, T)
    fwd = math.fsum(f for _, f in items)
    N = cfg.n_params_nonembedding
    out = [
        f"model: d_model={cfg.d_model} n_layers={cfg.n_layers} n_heads={cfg.n_heads} "
        f"head_dim={cfg.head_dim} d_ff={cfg.d_ff} vocab={cfg.padded_vocab} T={T} "
        f"{cfg.activation} {cfg.norm} {cfg.position} tied={cfg.tie_embeddings}",
        f"params: total {cfg.n_params:,}  non-embedding N {N:,}  "
        f"embedding {cfg.n_params_embedding:,}",
        "",
        f"{convention}: forward FLOPs per token — {flops._DESCRIPTIONS[convention]}",
    ]
    w = max(len(n) for n, _ in items)
    for name, f in items:
        out.append(f"  {name:<{w}}  {_fmt(f):>12}  {100 * f / fwd:5.1f}%")
    out.append(f"  {'forward total':<{w}}  {_fmt(fwd):>12}")
    out.append(f"  {'train (x3) per token':<{w}}  {_fmt(3 * fwd):>12}")
    out += ["", f"training FLOPs for D = {D:.4g} tokens (6ND = {6 * N * D:.4e}):"]
    out.append(f"  {'convention':<20} {'per token':>12} {'C = per token x D':>18} {'/ 6ND':>8}")
    for c, f in flops.all_flops_per_token(cfg, T).items():
        out.append(f"  {c:<20} {_fmt(f):>12} {f * D:>18.4e} {f / (6 * N):>8.4f}")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    """Entry point for `jaxscale flops`; returns the process exit code."""
    flops.check_convention(args.convention)
    run = _model_from_args(load_config(args.config, args.overrides), args.width, args.depth)
    print(format_report(run, args.convention, args.tokens, args.seq_len))
    if args.xla:
        xla, src = train.xla_train_flops.step_flops(run), "train.lower_step"
        exact = flops.step_flops(run, "exact")
        print(
            f"\nXLA cost_analysis of one train step ({src}; {run.train.batch_size} x "
            f"{run.model.context_length} tokens, layers unrolled, one microbatch):\n"
            f"  XLA {xla:.4e}   exact+AdamW {exact:.4e}   XLA/exact {xla / exact:.4f}"
        )
        for c in flops.CONVENTIONS:
            a = flops.flops_per_token(run.model, c) * run.tokens_per_step
            print(f"  XLA / {c:<20} {xla / a:.4f}")
    return 0
