"""`jaxscale frontier`: loss-vs-compute envelope and isoFLOP optima of a results directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jaxscale.analysis import frontier


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale frontier RESULTS [--convention C] [--out DIR] [--loss eval|train]`."""
    p = subparsers.add_parser(
        "frontier",
        help="loss-vs-compute envelope and isoFLOP optima of a results directory",
        description="Lower envelope of loss vs compute over all runs, isoFLOP parabola "
        "vertices N_opt(C), D_opt(C); writes CSV/JSON and PNG+SVG plots.",
    )
    p.add_argument("results", help="results directory (one sub-directory per run)")
    p.add_argument(
        "--convention", default=frontier.DEFAULT_CONVENTION, help="FLOP convention for C"
    )
    p.add_argument("--out", default=None, help="output directory (default <results>/frontier)")
    p.add_argument(
        "--loss",
        choices=("eval", "train"),
        default="eval",
        help="envelope from eval_loss points (default) or EMA-smoothed train loss",
    )
    p.add_argument(
        "--params",
        choices=("nonembedding", "total"),
        default=None,
        help="N used for the profiles (default: total for chinchilla, else non-embedding)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale frontier`."""
    fr = frontier.analyse(args.results, args.convention, loss=args.loss, params=args.params)
    if not len(fr.runs):
        raise ValueError(f"no runs found in {args.results}")
    out = Path(args.out) if args.out else Path(args.results) / "frontier"
    written = fr.save(out)
    print(fr.describe())
    print(f"wrote {len(written)} files to {out}")
    return 0
