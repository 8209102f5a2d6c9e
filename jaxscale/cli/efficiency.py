"""`jaxscale efficiency`: tokens to reach a loss vs N, and learning-curve extrapolation."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jaxscale.analysis import sample_efficiency
from jaxscale.cli import studyargs


def _floats(s: str | None) -> list[float] | None:
    if not s:
        return None
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {s!r}") from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale efficiency RESULTS [--targets ...] [--fractions ...] [--loss ...]`."""
    p = subparsers.add_parser(
        "efficiency",
        help="sample efficiency (tokens to reach a loss vs N) and learning-curve extrapolation",
        description="From a size sweep's curves: tokens each model needs to reach target losses "
        "(D_L ∝ N^-gamma), and how well L(N, S) (Kaplan 2020 eq. 1.6) fitted on the first "
        "part of training predicts every run's final loss.",
    )
    p.add_argument("results", help="results directory (e.g. from experiments/efficiency.py)")
    p.add_argument("--targets", default=None, help="comma-separated target losses (default auto)")
    p.add_argument(
        "--fractions",
        default=",".join(str(f) for f in sample_efficiency.DEFAULT_FRACTIONS),
        help="observed fractions of training for the extrapolation",
    )
    p.add_argument(
        "--loss",
        choices=("train", "eval"),
        default="train",
        help="curve fitted by L(N, S): smoothed train loss (dense) or eval points",
    )
    p.add_argument("--out", default=None, help="output directory (default <results>/analyses)")
    studyargs.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale efficiency`."""
    study = sample_efficiency.analyse_frames(
        *studyargs.load(args, args.results),
        targets=_floats(args.targets),
        fractions=_floats(args.fractions) or sample_efficiency.DEFAULT_FRACTIONS,
        loss=args.loss,
    )
    out = Path(args.out) if args.out else Path(args.results) / "analyses"
    written = study.save(out)
    print(study.describe())
    print(f"wrote {', '.join(p.name for p in written)} to {out}")
    return 0
