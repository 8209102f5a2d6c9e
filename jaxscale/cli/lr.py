"""`jaxscale lr`: learning-rate sensitivity of an LR sweep."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jaxscale.analysis import lr_sensitivity, transfer
from jaxscale.cli import studyargs


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale lr RESULTS [--tol 0.01] [--window 2] [--transfer] [--out DIR]`."""
    p = subparsers.add_parser(
        "lr",
        help="learning-rate sensitivity: loss vs LR per size, optimum and drift with N, B",
        description="Fits a parabola in log10 LR per (model size, batch size) around the best "
        "LR (Kaplan 2020 App. D.6), reports the optimum and its SE, the basin width and the "
        "optimum's drift with N and B.",
    )
    p.add_argument("results", help="results directory of an LR sweep (e.g. experiments/lr.py)")
    p.add_argument(
        "--tol",
        type=float,
        default=0.01,
        help="basin: relative loss excess over the optimum (default 0.01 = 1%%)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=2,
        help="grid neighbours each side of the best LR used in the parabola",
    )
    p.add_argument(
        "--transfer",
        action="store_true",
        help="instead: does one LR serve every shape? (μP / 1/L check of a width or depth sweep "
        "such as experiments/mup.py: optimum per shape, spread in grid steps, each seed left out)",
    )
    p.add_argument(
        "--tol-steps",
        type=float,
        default=1.0,
        help="with --transfer: the largest spread of the optima, in LR grid steps, that counts "
        "as transfer (default 1)",
    )
    p.add_argument("--out", default=None, help="output directory (default <results>/analyses)")
    studyargs.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale lr`."""
    if not args.tol > 0:
        raise ValueError(f"--tol must be > 0, got {args.tol}")
    if args.window < 1:
        raise ValueError(f"--window must be >= 1, got {args.window}")
    runs = studyargs.load(args, args.results)
    if args.transfer:
        study = transfer.analyse(runs, tol_steps=args.tol_steps, half_window=args.window)
    else:
        study = lr_sensitivity.analyse(runs, tol=args.tol, half_window=args.window)
    out = Path(args.out) if args.out else Path(args.results) / "analyses"
    written = study.save(out)
    print(study.describe())
    print(f"wrote {', '.join(p.name for p in written)} to {out}")
    return 0
