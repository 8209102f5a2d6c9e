"""`jaxscale shift`: out-of-distribution vs in-distribution loss offsets across runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jaxscale.analysis import shift
from jaxscale.cli import studyargs


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale shift RESULTS [--reference stdlib] [--sets a,b] [--out DIR]`."""
    p = subparsers.add_parser(
        "shift",
        help="distribution shift: OOD vs in-distribution loss offset across runs",
        description="Reads <run>/eval.json (from `jaxscale eval --sets ...`) and fits, per OOD "
        "set, L_ood = L_in + c (Kaplan 2020 §3.2.2) with a 95% interval, plus a free line.",
    )
    p.add_argument("results", help="results directory (or one run directory)")
    p.add_argument("--reference", default="stdlib", help="in-distribution set (default stdlib)")
    p.add_argument("--sets", default=None, help="OOD sets to analyse (default: all evaluated)")
    p.add_argument("--out", default=None, help="output directory (default <results>/analyses)")
    studyargs.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale shift`."""
    sets = [s.strip() for s in args.sets.split(",")] if args.sets else None
    sel = studyargs.select(args, args.results)
    study = shift.analyse(args.results, args.reference, sets, run_ids=sel.run_ids)
    out = Path(args.out) if args.out else Path(args.results) / "analyses"
    written = study.save(out)
    print(study.describe())
    print(f"wrote {', '.join(p.name for p in written)} to {out}")
    return 0
