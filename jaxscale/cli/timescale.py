"""`jaxscale timescale`: the optimal AdamW timescale τ = B/(ηλD) per (N, D) and vs D/N."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jaxscale.analysis import timescale
from jaxscale.cli import studyargs


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale timescale RESULTS [--method nuts] [--window 2] [--out DIR]`."""
    p = subparsers.add_parser(
        "timescale",
        help="optimal AdamW timescale tau = B/(eta lambda D) vs tokens per parameter "
        "(Bergsma et al. 2025)",
        description="Per (N, D) a parabola in log10 tau through the best weight decay and its "
        "neighbours gives tau_opt with a 90% interval (optima at the grid's edge are flagged "
        "and left out); tau_opt = c (D/N)^k is fitted with the Bayesian fitter (90% "
        "intervals) beside Bergsma et al. 2025's 1.084 (D/N)^-0.527. B tokens/step, D tokens, "
        "eta peak LR, N non-embedding. Study file: experiments/wd.py.",
    )
    p.add_argument("results", help="results directory of experiments/wd.py")
    p.add_argument(
        "--method",
        default="nuts",
        choices=("nuts", "laplace"),
        help="posterior: NUTS (default) or Laplace, which this law refuses (it under-covered "
        "on planted data): the law is fitted with NUTS either way, and the output says so",
    )
    p.add_argument(
        "--window",
        type=int,
        default=2,
        help="grid neighbours each side of the best tau used in the parabola",
    )
    p.add_argument("--out", default=None, help="output directory (default <results>/analyses)")
    studyargs.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale timescale`."""
    if args.window < 1:
        raise ValueError(f"--window must be >= 1, got {args.window}")
    study = timescale.analyse(
        studyargs.load(args, args.results), method=args.method, half_window=args.window
    )
    out = Path(args.out) if args.out else Path(args.results) / "analyses"
    written = study.save(out)
    print(study.describe())
    print(f"wrote {', '.join(p.name for p in written)} to {out}")
    return 0
