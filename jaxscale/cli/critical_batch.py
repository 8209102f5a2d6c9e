"""`jaxscale critical-batch`: critical batch size from a batch-size sweep."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from jaxscale.analysis import critical_batch
from jaxscale.cli import studyargs


def _losses(text: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated losses, got {text!r}") from None
    if not vals or not all(math.isfinite(v) and v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"target losses must be positive numbers, got {text!r}")
    return vals


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale critical-batch RESULTS ...`."""
    p = subparsers.add_parser(
        "critical-batch",
        help="critical batch size from a batch-size sweep (+ logged gradient noise scale)",
        description="Steps S and examples E to reach target losses across batch sizes at a fixed "
        "model; fits S(B) = S_min (1 + B_crit/B) per target with NUTS and B_crit(L) = "
        "B*/L^(1/alpha_B) across targets (Kaplan et al. 2020 §5.1); overlays the logged gradient "
        "noise scale B_simple (McCandlish et al. 2018).",
    )
    p.add_argument("results", help="results directory of one model's batch sweep")
    p.add_argument(
        "--targets",
        type=_losses,
        default=None,
        help="comma-separated target losses (default: chosen from the curves)",
    )
    p.add_argument("--n-targets", type=int, default=4, help="automatic targets to choose")
    p.add_argument(
        "--loss",
        choices=critical_batch.LOSS_KINDS,
        default="train",
        help="which curve reaches the targets: smoothed train loss or eval loss",
    )
    p.add_argument(
        "--bandwidth", type=float, default=0.1, help="train-loss smoothing width in ln(step)"
    )
    p.add_argument(
        "--method",
        choices=("nuts", "laplace", "map"),
        default="nuts",
        help="inference for each S(B) hyperbola (default nuts)",
    )
    p.add_argument("--chains", type=int, default=4, help="NUTS chains per target")
    p.add_argument("--warmup", type=int, default=1000, help="NUTS warmup steps per chain")
    p.add_argument("--draws", type=int, default=1000, help="NUTS draws per chain")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", default=None, help="output directory (default RESULTS/critical_batch)")
    p.add_argument("--no-plots", action="store_true", help="write tables and JSON only")
    studyargs.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale critical-batch`; 1 if no target could be fitted or a fit failed."""
    if args.n_targets < 1:
        raise ValueError(f"--n-targets must be >= 1, got {args.n_targets}")
    cb = critical_batch.analyse(
        studyargs.load(args, args.results),
        targets=args.targets,
        n_targets=args.n_targets,
        loss=args.loss,
        bandwidth=args.bandwidth,
        method=args.method,
        chains=args.chains,
        warmup=args.warmup,
        draws=args.draws,
        seed=args.seed,
    )
    print(cb.describe())
    out = Path(args.out) if args.out else Path(args.results) / "critical_batch"
    paths = cb.save(out, plots=not args.no_plots)
    print(f"wrote {len(paths)} files to {out}: " + ", ".join(p.name for p in paths))
    return 0 if cb.fits and all(not f.problems for f in cb.fits) else 1
