"""`jaxscale frontier`: loss-vs-compute envelope and isoFLOP optima of runs or of a CSV."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from jaxscale.analysis import frontier, isoflop
from jaxscale.cli import studyargs


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale frontier RESULTS|CSV [--convention C] [--out DIR] [--window K] ...`."""
    p = subparsers.add_parser(
        "frontier",
        help="loss-vs-compute envelope and isoFLOP optima (Approach 2) of runs or a CSV",
        description="Lower envelope of loss vs compute over all runs; isoFLOP profiles "
        "(Hoffmann 2022 approach 2): per budget, a parabola in log N through the sizes nearest "
        "the best run, its vertex N_opt(C) with a 90%% bootstrap interval where the best run is "
        "bracketed, and N_opt ∝ C^a, D_opt ∝ C^b with 90%% intervals from 3 or more bracketed "
        "vertices (refused below that). Writes CSV/JSON and PNG+SVG plots.",
    )
    p.add_argument(
        "results",
        help="results directory (one sub-directory per run), or a CSV with columns N, loss and "
        "C and/or D, optionally budget (also Epoch's 'Model Size', 'Training FLOP', 'Loss')",
    )
    p.add_argument(
        "--convention",
        default=frontier.DEFAULT_CONVENTION,
        help="FLOP convention for C (a CSV's C is used as given unless it has flops_<conv>)",
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
    p.add_argument(
        "--window",
        type=int,
        default=isoflop.WINDOW,
        help=f"sizes nearest each budget's best run that its parabola is fitted through "
        f"(default {isoflop.WINDOW}; at least 3)",
    )
    p.add_argument(
        "--noise-sd",
        type=float,
        default=None,
        help="seed-to-seed SD of the final loss for the bootstrap (default: pooled residuals)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="give an exponent from 2 bracketed vertices (its interval cannot test the power law)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    studyargs.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale frontier`."""
    source: Any = args.results
    if studyargs.check_directory(args, args.results):
        source = studyargs.load(args, args.results)
        if not len(source[0]):
            raise ValueError(f"no runs found in {args.results}")
    fr = frontier.analyse(
        source,
        args.convention,
        loss=args.loss,
        params=args.params,
        window=args.window,
        noise_sd=args.noise_sd,
        seed=args.seed,
        force=args.force,
        name=str(args.results),
    )
    path = Path(args.results)
    # A CSV's outputs go next to it: data/x.csv -> data/x_frontier/
    default_out = path.with_name(f"{path.stem}_frontier") if path.is_file() else path / "frontier"
    out = Path(args.out) if args.out else default_out
    written = fr.save(out)
    print(fr.describe())
    if fr.a is None and Path(args.results).is_dir() and len(fr.runs):
        print(
            "hint: a Bayesian fit of L(N, D) to the same final losses needs no bracketed "
            "vertex; it gives N_opt and D_opt at the largest run's compute with 90% intervals, "
            f"and a = beta/(alpha+beta): {fit_command(args, fr)}"
        )
    print(f"wrote {len(written)} files to {out}")
    return 0


def fit_command(args: argparse.Namespace, fr: frontier.Frontier) -> str:
    """The `jaxscale fit` command for the runs and FLOP convention this frontier used."""
    words = ["jaxscale", "fit", str(args.results)]
    if args.study:
        words += ["--study", str(args.study), "--setting", args.setting]
    if args.all_runs:
        words.append("--all-runs")
    words += ["--flops-convention", fr.convention]
    # fit reads its target as 6ND: the largest run's, so the line it prints is about this data
    words += ["--target-compute", f"{float(6 * (fr.runs['N'] * fr.runs['D']).max()):.3g}"]
    return shlex.join(words)
