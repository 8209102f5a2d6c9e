"""`jaxscale eval`: evaluate trained runs on eval sets; optionally the loss-by-position study."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from jaxscale.analysis.position import describe_position, position_study, save_position
from jaxscale.cli import studyargs
from jaxscale.core.evaluate import DEFAULT_SETS, MIN_EVAL_SEQUENCES, evaluate_run
from jaxscale.runs.rundir import EVAL, RunDir, run_dirs


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale eval RUN_OR_RESULTS [--sets ...] [--per-position] [--batches N]`."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate trained runs on eval sets (per-position loss); writes <run>/eval.json",
        description="Restore each run's latest checkpoint and evaluate it on one or more eval "
        "sets: stdlib (held-out split), site-packages (third-party Python), prose (English), "
        "or a path to your own text. Writes <run_dir>/eval.json. With --per-position, fits "
        "L(t) = L_inf + A t^-alpha per run (Kaplan 2020 §3.3) and plots the sweep.",
    )
    p.add_argument("path", help="a run directory or a results directory of runs")
    p.add_argument(
        "--sets",
        default=",".join(DEFAULT_SETS),
        help="comma-separated eval sets: stdlib, site-packages, prose or text paths",
    )
    p.add_argument(
        "--batches",
        type=int,
        default=None,
        help=f"eval batches per set (default: {MIN_EVAL_SEQUENCES} sequences' worth)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="sequences per eval batch (default: the run's train.batch_size)",
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        default=2_000_000,
        help="bytes of text read for out-of-distribution sets (default 2e6)",
    )
    p.add_argument(
        "--per-position",
        action="store_true",
        help="fit and plot loss vs context position (first set in --sets)",
    )
    p.add_argument("--force", action="store_true", help="re-evaluate sets already in eval.json")
    p.add_argument(
        "--out", default=None, help="directory for position plots (default <path>/analyses)"
    )
    studyargs.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale eval`; 2 if no run could be evaluated."""
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if not sets:
        raise ValueError("--sets is empty; name at least one eval set, e.g. --sets stdlib")
    if args.batches is not None and args.batches < 2:
        raise ValueError(f"--batches must be >= 2 (for a standard error), got {args.batches}")
    done = 0
    dirs = run_dirs(args.path, require=True)
    # One run directory is evaluated as named; a results directory, by study (issue 15).
    run_ids = None if RunDir(args.path).is_run() else studyargs.select(args, args.path).run_ids
    for d in dirs:
        if run_ids is not None and d.name not in run_ids:
            continue
        summ = d.read_summary() or {}
        if summ.get("status") in ("diverged", "failed"):
            print(f"{d.name}: skipped ({summ['status']})")
            continue
        try:
            r = evaluate_run(
                d,
                sets,
                n_batches=args.batches,
                batch_size=args.batch_size,
                max_bytes=args.max_bytes,
                force=args.force,
            )
        except FileNotFoundError as e:
            print(f"{d.name}: skipped ({e})")
            continue
        done += 1
        cells = "  ".join(
            f"{k}={v['loss']:.4f}±{v['loss_se']:.4f}" for k, v in r["sets"].items() if k in sets
        )
        print(
            f"{d.name} {r['name']:<28} N={r['n_params_nonembedding']:>10,} step {r['step']:>6}  "
            f"{cells}"
        )
    if not done:
        print(f"error: no evaluable runs under {args.path}", file=sys.stderr)
        return 2
    print(f"wrote {EVAL} in {done} run director{'y' if done == 1 else 'ies'}")
    if args.per_position:
        study = position_study(args.path, sets[0], run_ids=run_ids)
        out = Path(args.out) if args.out else Path(args.path) / "analyses"
        written = save_position(study, out)
        print(describe_position(study))
        print(f"wrote {len(written)} files to {out}")
    return 0
