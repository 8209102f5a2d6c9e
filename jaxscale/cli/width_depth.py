"""`jaxscale shape`: fit the aspect-ratio penalty of a shape study, or plan a shape grid."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from jaxscale.analysis import width_depth
from jaxscale.cli import studyargs
from jaxscale.config import ModelConfig


def _numbers(s: str) -> list[float]:
    try:
        return [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale shape RESULTS_DIR` (penalty fit) or `jaxscale shape --plan N1,N2`."""
    p = subparsers.add_parser(
        "shape",
        help="width-vs-depth study: fit the aspect-ratio penalty, or plan a shape grid",
        description="Fit L = L*(N)(1 + k (ln r - ln r*(N))^2) to a shape study's runs (Kaplan "
        "2020 Fig. 5) and report r*(N), the penalty 4x/10x off the optimum and the drift of r* "
        "with N, with 90% intervals; or, with --plan, print a shape grid at fixed N.",
    )
    p.add_argument("results", nargs="?", help="results directory of a shape study")
    p.add_argument("--out", help="output directory (default RESULTS/_shape)")
    p.add_argument(
        "--method",
        choices=("nuts", "laplace", "map"),
        default="nuts",
        help="inference method (default nuts)",
    )
    p.add_argument("--chains", type=int, default=4, help="NUTS chains")
    p.add_argument("--warmup", type=int, default=1000, help="NUTS warmup steps per chain")
    p.add_argument("--draws", type=int, default=1000, help="NUTS draws per chain, or Laplace draws")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--asymmetric", action="store_true", help="separate curvature on each side")
    p.add_argument("--no-plots", action="store_true", help="write tables and JSON only")
    p.add_argument("--plan", type=_numbers, metavar="N1,N2,...", help="print the grid at these N")
    p.add_argument("--head-dim", type=int, default=64, help="--plan: fixed head dimension")
    p.add_argument("--n-shapes", type=int, default=7, help="--plan: shapes per level")
    p.add_argument("--max-rel-dev", type=float, default=0.05, help="--plan: N tolerance")
    studyargs.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale shape`; 1 if the fit failed its diagnostics."""
    if args.plan:
        shapes = width_depth.shape_grid(
            ModelConfig(),
            args.plan,
            head_dim=args.head_dim,
            n_shapes=args.n_shapes,
            max_rel_dev=args.max_rel_dev,
        )
        with pd.option_context("display.width", 120, "display.float_format", "{:.4g}".format):
            print(width_depth.grid_table(shapes).to_string(index=False))
        return 0
    if not args.results:
        raise ValueError("give a results directory (jaxscale shape RESULTS) or --plan N1,N2")
    if not Path(args.results).is_dir():
        raise FileNotFoundError(f"results directory {args.results!r} does not exist")
    runs_df, _ = studyargs.load(args, args.results)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sf = width_depth.fit_penalty(
            runs_df,
            asymmetric=args.asymmetric,
            method=args.method,
            chains=args.chains,
            warmup=args.warmup,
            draws=args.draws,
            seed=args.seed,
            quiet=True,
        )
    res = sf.result
    print(
        f"shape penalty fit [{res.method}] on {res.loss.size} runs at {len(sf.levels)} N level(s) "
        f"in {res.seconds:.1f} s"
    )
    print(sf.describe())
    out = Path(args.out) if args.out else Path(args.results) / "_shape"
    paths = sf.save(out, plots=not args.no_plots)
    print("wrote " + ", ".join(str(p) for p in paths))
    if not sf.ok:
        print("DIAGNOSTICS FAILED: " + "; ".join(res.problems))
        return 1
    return 0
