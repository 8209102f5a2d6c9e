"""`jaxscale sweep run|status STUDY`: run a study's runs, or print their status table."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from jaxscale.config import ConfigError
from jaxscale.runs import selection, store
from jaxscale.runs.runner import foreign_note, run_sweep, status_table
from jaxscale.runs.study import load_study

EXIT_CODES = f"""exit codes:
  0  this task's share is finished (every run done or diverged)
  1  some run failed (error.txt in its directory), or its directory holds a different run
  2  bad input: a broken study file or a bad option, e.g. --lock-timeout below {store.MIN_LOCK_TIMEOUT_S:g} s
  3  preempted, or runs left unfinished by other workers: rerun the same command to resume
  4  runs of this share are held by other live workers: rerun later, or `jaxscale sweep status`
When several apply, 3 and 4 (share not finished) win over 1."""


def format_table(rows: list[dict]) -> str:
    """Plain fixed-width text table."""
    if not rows:
        return "(no runs)"
    cols = list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3e}" if (abs(v) >= 1e5 or (v and abs(v) < 1e-2)) else f"{v:.4f}"
        return str(v)

    cells = [[fmt(r[c]) for c in cols] for r in rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, width))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, width)) for row in cells]
    return "\n".join(lines)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale sweep run|status STUDY ...`."""
    p = subparsers.add_parser(
        "sweep",
        help="run or inspect a study (a Python file in experiments/)",
        description="Run a study's runs into a results directory, or show their status. "
        "Study files are Python and are executed: only pass files you trust. Any number of "
        "workers may share one results directory (per-run lock files; docs/faults.md says what "
        "the shared filesystem must provide). `sweep run --help` lists the exit codes.",
    )
    sub = p.add_subparsers(dest="sweep_cmd", required=True)
    for name, hlp in (("run", "train every pending run"), ("status", "print a status table")):
        q = sub.add_parser(
            name,
            help=hlp,
            description=hlp,
            epilog=EXIT_CODES if name == "run" else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        q.add_argument("study", help="study file, e.g. experiments/quickstart.py")
        q.add_argument("--setting", default="default", help="study setting, e.g. tiny")
        q.add_argument(
            "--results", default=None, help="results directory (default results/<study>)"
        )
        q.add_argument(
            "--convention", default=None, help="FLOP convention for budgets (study default)"
        )
        q.add_argument(
            "--lock-timeout",
            type=float,
            default=store.DEFAULT_LOCK_TIMEOUT_S,
            help="seconds without a heartbeat before another worker takes a run's lock over "
            f"(heartbeat every timeout/{store.HEARTBEATS_PER_TIMEOUT}; at least "
            f"{store.MIN_LOCK_TIMEOUT_S:g}, and above your network filesystem's attribute-cache "
            "time)",
        )
        if name == "run":
            q.add_argument(
                "--task-index",
                type=int,
                default=0,
                help="this worker's slice, 0-based (Slurm: $SLURM_ARRAY_TASK_ID)",
            )
            q.add_argument(
                "--num-tasks",
                type=int,
                default=1,
                help="number of slices (Slurm: $SLURM_ARRAY_TASK_COUNT; a pod: host count)",
            )
            q.add_argument("--retry-failed", action="store_true", help="rerun failed runs")
            q.add_argument(
                "--no-group",
                action="store_true",
                help="train runs one by one instead of K compatible runs per vmapped step",
            )
            q.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale sweep`."""
    try:
        store.heartbeat_for(args.lock_timeout)  # refuse an unsafe --lock-timeout up front
        study = load_study(args.study)
        runs = study.runs(args.setting)
        conv = args.convention or study.convention
        results = Path(args.results) if args.results else study.default_results(args.setting)
        if args.sweep_cmd == "status":
            rows = status_table(runs, results, convention=conv, lock_timeout=args.lock_timeout)
            print(f"{study.name} [{args.setting}] in {results}")
            print(format_table(rows))
            counts: dict[str, int] = {}
            for r in rows:
                counts[r["state"]] = counts.get(r["state"], 0) + 1
            print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
            note = foreign_note(runs, results)
            if note:
                print(note)
            return 0
        if "://" not in str(args.results):  # the runner refuses URIs below, in one line
            results.mkdir(parents=True, exist_ok=True)
            # Analyses of this directory then read this study's runs by default.
            selection.write_record(results, study, args.setting, runs)
        print(
            f"{study.name} [{args.setting}]: {len(runs)} runs → {results} "
            f"(task {args.task_index}/{args.num_tasks})",
            file=sys.stderr,
        )
        rep = run_sweep(
            runs,
            results,
            task_index=args.task_index,
            num_tasks=args.num_tasks,
            retry_failed=args.retry_failed,
            lock_timeout=args.lock_timeout,
            progress=not args.no_progress,
            convention=conv,
            group=not args.no_group,
        )
    except ConfigError as e:
        if os.environ.get("JAXSCALE_DEBUG"):
            raise
        print(f"jaxscale: error: {e}", file=sys.stderr)
        return 2
    print(
        f"done {rep.done}, diverged {rep.diverged}, failed {rep.failed}, "
        f"held by other workers {rep.running_elsewhere}, unfinished {rep.unfinished} of "
        f"{rep.total}; trained {len(rep.trained)} now; {rep.flops_line(conv)}",
        file=sys.stderr,
    )
    if rep.exit_code:
        print(f"jaxscale sweep: exit {rep.exit_code}: {rep.reason}", file=sys.stderr)
    return rep.exit_code
