"""--study / --setting / --all-runs for analysis commands: read one study's runs (issue 15)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from jaxscale.runs import results as results_lib
from jaxscale.runs import selection
from jaxscale.runs.rundir import run_dirs


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the three flags that choose which runs of a results directory are analysed."""
    p.add_argument(
        "--study",
        default=None,
        help="study file: analyse only its runs (default: the study recorded in "
        f"RESULTS/{selection.RECORD} by `jaxscale study` / `sweep run`, else every run)",
    )
    p.add_argument("--setting", default="default", help="the study's setting (with --study)")
    p.add_argument(
        "--all-runs",
        action="store_true",
        help="analyse every run in the directory, whatever study made it",
    )


def select(
    args: argparse.Namespace, results: str | Path, runs_df: pd.DataFrame | None = None
) -> selection.Selection:
    """The runs the flags choose; prints the one-line note on what was used and left out."""
    present = (
        list(runs_df["run_id"]) if runs_df is not None else [r.name for r in run_dirs(results)]
    )
    sel = selection.select(
        results,
        present,
        study=args.study,
        setting=args.setting,
        all_runs=args.all_runs,
        runs_df=runs_df,
    )
    print(f"runs: {sel.note}")
    return sel


def load(args: argparse.Namespace, results: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs_df, curves_df) of the runs the flags choose (see select)."""
    dfs = results_lib.load(results)
    return select(args, results, dfs[0]).frames(dfs)


def check_directory(args: argparse.Namespace, source: str | Path) -> bool:
    """True if source is a results directory; --study/--all-runs on a file is an error."""
    if Path(source).is_dir():
        return True
    if args.study or args.all_runs:
        raise ValueError(
            f"--study and --all-runs choose runs of a results directory; {source} is not one"
        )
    return False
