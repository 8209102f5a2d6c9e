"""`jaxscale export`: a results directory's runs, curves and fits as CSV and Parquet tables."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jaxscale.cli import studyargs
from jaxscale.runs import export
from jaxscale.runs.rundir import run_dirs

EXIT_CODES = """exit codes:
  0  every table written
  2  bad input, in one line `jaxscale: error: ...`: RESULTS missing or holding no run, no run
     of the chosen study in it, an unknown --format, or --out naming a file; nothing written"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale export RESULTS [--out DIR] [--format csv,parquet]`."""
    p = subparsers.add_parser(
        "export",
        help="runs, curves and fits of a results directory as CSV and Parquet (pandas/polars)",
        description="Write runs (one row per run: config, N as n_params / "
        "n_params_nonembedding / n_params_embedding, tokens, losses, flops_<convention> for "
        "every FLOP convention), curves (one row per logged step, with flops_<convention>) and "
        "fits (one row per parameter of every saved fit under RESULTS) as <table>.csv and "
        "<table>.parquet. docs/tracking.md lists the columns.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", help="results directory (one sub-directory per run)")
    p.add_argument("--out", default=None, help="output directory (default <results>/export)")
    p.add_argument(
        "--format",
        default=",".join(export.FORMATS),
        help=f"comma-separated formats (default {','.join(export.FORMATS)})",
    )
    studyargs.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale export`."""
    formats = export.parse_formats(args.format)
    out = Path(args.out) if args.out else Path(args.results) / "export"
    studyargs.check_directory(args, args.results)
    run_dirs(args.results, require=True)  # before the selection note: a missing or empty dir
    run_ids = studyargs.select(args, args.results).run_ids
    ex = export.gather(args.results, run_ids)
    written = ex.write(out, formats)
    sizes = ", ".join(f"{name} ({len(df)} rows)" for name, df in ex.tables().items())
    print(f"wrote {len(written)} files to {out}: {sizes}")
    return 0
