"""The `jaxscale` command line: train and study here; every other command is in COMMANDS."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
import sys
import textwrap
from collections.abc import Sequence
from types import ModuleType

from jaxscale.cli import report, suggest
from jaxscale.config import (
    ConfigError,
    DataConfig,
    MeshConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    load_config,
    parse_overrides,
)
from jaxscale.core import cache, train
from jaxscale.core.tracking import Tracking
from jaxscale.runs import selection, store
from jaxscale.runs.rundir import RunDir
from jaxscale.runs.runner import run_sweep
from jaxscale.runs.study import load_study


def _config_help() -> str:
    lines = ["config keys (YAML file sections, or --section.key=value overrides):"]
    for sec, cls in (
        ("model", ModelConfig),
        ("data", DataConfig),
        ("train", TrainConfig),
        ("mesh", MeshConfig),
    ):
        for f in dataclasses.fields(cls):
            key = f"{sec}.{f.name}"
            default = f.default if f.default is not dataclasses.MISSING else "-"
            desc = f.metadata["help"]
            lines.append(f"  --{key}={default!s:<24} {desc}")
    return "\n".join(lines)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML/JSON run config (loaded safely)")
    p.add_argument(
        "--width",
        type=int,
        help="d_model; heads and d_ff follow the base model (ModelConfig.resized)",
    )
    p.add_argument("--depth", type=int, help="n_layers (with --width)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set train.lr=1e-3 (same as --train.lr=1e-3)",
    )


def config_from_args(args: argparse.Namespace, extra: Sequence[str]) -> RunConfig:
    """RunConfig from --config, --width/--depth and KEY=VALUE overrides (--a.b=c or --set)."""
    overrides = list(args.set)
    for item in extra:
        if not item.startswith("--") or "=" not in item:
            raise ConfigError(
                f"unrecognised argument {item!r}; overrides look like --train.lr=1e-3"
            )
        overrides.append(item[2:])
    cfg = load_config(args.config)
    if args.width or args.depth:
        if not (args.width and args.depth):
            raise ConfigError("--width and --depth go together")
        model = cfg.model.resized(args.width, args.depth)
        cfg = dataclasses.replace(cfg, model=model)
    # Explicit overrides win over sizes derived from --width/--depth.
    return apply_overrides(cfg, parse_overrides(overrides)) if overrides else cfg


def _cmd_train(args: argparse.Namespace, extra: Sequence[str]) -> int:
    cfg = config_from_args(args, extra)
    tracking = Tracking(wandb_project=args.wandb)

    run_dir = args.run_dir or os.path.join("runs", cfg.run_id())
    print(
        f"jaxscale train: {cfg.name} [{cfg.run_id()}]  N={cfg.model.n_params_nonembedding:,} "
        f"(total {cfg.model.n_params:,})  d_model={cfg.model.d_model} n_layers="
        f"{cfg.model.n_layers}  {cfg.train.steps} steps x {cfg.tokens_per_step:,} tokens -> {run_dir}"
    )
    run = RunDir(run_dir)
    run.check_writable()
    if args.replace and any(run.path.iterdir()):
        print(f"jaxscale train: moved the old run aside to {run.move_aside()}")
    lock = run.lock()
    if lock is None:
        holder = run.lock_info() or {}
        raise ConfigError(
            f"{run_dir} is being trained by another live worker ({holder.get('host')}:"
            f"{holder.get('pid')}); wait for it to finish, or pass another --run-dir"
        )
    try:
        with lock:
            s = train.train(cfg, run, progress=not args.no_progress, tracking=tracking)
    except store.LockLost as e:
        print(f"jaxscale: error: {e}", file=sys.stderr)
        return 4
    if "note" in s:  # preempted before anything was written: there is no run to describe
        print(
            f"jaxscale train: preempted: {s['note']}; run the same command again", file=sys.stderr
        )
        return 0
    print(summary_paragraph(s, run_dir))
    return 0 if s["status"] in ("done", "preempted") else 3


TRAIN_EXIT_CODES = """exit codes:
  0    done, or preempted by SIGTERM (checkpointed first; during start-up nothing is written):
       run the same command again to resume
  2    refused or failed, in one line `jaxscale: error: ...`: an invalid config or input, a run
       directory holding another run (see --replace) or held by another live worker, a run
       that cannot fit in memory, an unreadable checkpoint, or an I/O error such as a full
       disk (the line names the path)
  3    diverged (non-finite training loss); the summary names the step
  4    another worker took this run's lock over (this one's heartbeat lapsed); this worker
       stopped without writing anything further
  130  interrupted (Ctrl-C)"""


def _cmd_study(args: argparse.Namespace, extra: Sequence[str]) -> int:

    study = load_study(args.study)
    runs = study.runs(args.setting)
    conv = args.convention or study.convention
    results = args.results or str(study.default_results(args.setting))
    if args.adaptive:  # train -> refit -> suggest until the target is known (cli/suggest.py)
        return suggest.adaptive_study(
            study,
            args.setting,
            results,
            target=args.adaptive,
            threshold=args.threshold,
            budget=args.budget,
            k=args.k,
            max_n=args.max_n,
            method=args.posterior,
            convention=conv,
            progress=not args.no_progress,
        )
    print(f"jaxscale study {study.name} [{args.setting}]: {len(runs)} runs -> {results}")
    # Analyses of this directory then read these runs, not others left there (issue 15).
    selection.write_record(results, study, args.setting, runs)
    # A failed run (an exception, not divergence) is retried: rerunning a study is the fix.
    rep = run_sweep(
        runs, results, progress=not args.no_progress, convention=conv, retry_failed=True
    )
    print(
        f"sweep: {rep.done} done, {rep.diverged} diverged, {rep.failed} failed of {rep.total}; "
        f"{rep.flops_line(conv)}"
    )
    if rep.preempted:
        print("preempted: run the same command again to continue")
        return rep.exit_code
    if args.no_report:
        return rep.exit_code
    built = report.build_report(
        results,
        convention=conv,
        fit_draws=args.fit_draws,
        fit_warmup=args.fit_warmup if args.fit_warmup is not None else args.fit_draws,
        study=args.study,
        setting=args.setting,
    )
    for line in built.headlines:
        print("  " + line)
    print(f"report: {built.path}")
    return rep.exit_code or built.exit_code


def summary_paragraph(s: dict, run_dir: str) -> str:
    """One readable paragraph about a finished run."""
    f = s.get("flops", {}).get("kaplan_attn", float("nan"))
    # the peak is published or measured (flops.device_peak_flops); claim neither unless recorded
    src = s.get("peak_flops_source")
    peak = f"the device peak ({src})" if src else "the device peak"
    # "Run run [id]" said nothing: the name is shown only when someone chose one.
    named = f" ({s['name']})" if s["name"] != RunConfig.name else ""
    text = (
        f"Run {s['run_id']}{named} {s['status']} after {s['steps']} steps "
        f"({s['tokens']:,} tokens, {f:.3g} FLOPs by 6N+attention). Final validation loss "
        f"{s['loss']:.4f} nats/token (train {s['train_loss']:.4f}); {s['tokens_per_s']:,.0f} tokens/s, "
        f"MFU {100 * s['mfu']:.1f}% of {peak}; wall {s['wall_time_s']:.1f} s. "
        f"Metrics, summary, checkpoints and TensorBoard files are in {run_dir}."
    )
    if s["status"] == "preempted":
        text += " Preempted: run the same command again to resume."
    if s["status"] == "diverged":
        text += f" {s.get('error', '')}: lower train.lr or raise warmup."
    return textwrap.fill(text, 100)


# Every command besides train and study: a module exposing add_parser(subparsers) -> its
# argparse parser, and run(args) -> exit code. Imported when the parser is built, so a command
# module that cannot load fails the whole CLI instead of silently vanishing from it.
COMMANDS = (
    "jaxscale.cli.flops",
    "jaxscale.cli.sweep",
    "jaxscale.cli.frontier",
    "jaxscale.cli.fit",
    "jaxscale.cli.critical_batch",
    "jaxscale.cli.width_depth",
    "jaxscale.cli.report",
    "jaxscale.cli.eval",
    "jaxscale.cli.shift",
    "jaxscale.cli.lr",
    "jaxscale.cli.efficiency",
    "jaxscale.cli.step_law",
    "jaxscale.cli.suggest",
    "jaxscale.cli.timescale",
    "jaxscale.cli.export",
    "jaxscale.cli.anneal",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxscale",
        description="Scaling-law studies of transformer LMs in JAX: train, sweep, fit, extrapolate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "train",
        help="train one model (resumes from its run directory)",
        description="Train one decoder-only transformer on the configured corpus. A run "
        "directory with checkpoints is resumed; SIGTERM checkpoints and exits 0. A directory "
        "holding another run (other config or data) is refused; the run is locked while it "
        "trains.",
        epilog=f"{TRAIN_EXIT_CODES}\n\n{_config_help()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    p.add_argument("--run-dir", help="run directory (default runs/<run_id>)")
    p.add_argument(
        "--replace",
        action="store_true",
        help="move a run already in the run directory aside to <dir>.replaced-<UTC time> "
        "(nothing is deleted), then train this one there",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--wandb",
        metavar="PROJECT",
        help="also log config, manifest and metrics to this Weights & Biases project (needs "
        "`pip install wandb`; TensorBoard files are always written to <run-dir>/tensorboard)",
    )
    p.set_defaults(func=_cmd_train, takes_extra=True)
    q = sub.add_parser(
        "study",
        help="run a study end to end: sweep -> frontier -> Bayesian fit -> HTML report",
        description="Run every pending run of a study file (resumable, idempotent), then "
        "write <results>/report/report.html with the frontier, the study's own backtest, the "
        "fit and extrapolations.",
        epilog="exit codes: 0 done and every report check passed; 1 a run failed, or the "
        "report's numbers failed their own checks (fit diagnostics, backtest; the report's "
        "first line and banner say which); 2 bad input; 3 preempted or unfinished (rerun to "
        "resume); 4 runs held by other live workers",
    )
    q.add_argument("study", help="study file, e.g. experiments/quickstart.py")
    q.add_argument("--setting", default="default", help="study setting, e.g. tiny")
    q.add_argument("--results", help="results directory (default results/<study>)")
    q.add_argument("--convention", help="FLOP convention for C (default: the study's)")
    q.add_argument("--fit-draws", type=int, default=1000, help="NUTS draws per chain")
    q.add_argument(
        "--fit-warmup", type=int, default=None, help="NUTS warmup per chain (default: --fit-draws)"
    )
    q.add_argument("--no-report", action="store_true", help="only run the sweep")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.add_argument(
        "--adaptive",
        metavar="TARGET",
        help="after the study's runs, add runs chosen by `jaxscale suggest` for TARGET (e.g. "
        "N_opt@1e15) until its 90%% interval ratio q95/q5 <= --threshold or --budget is spent; "
        "path in <results>/adaptive/",
    )
    q.add_argument("--threshold", type=float, default=1.5, help="--adaptive: stop at this q95/q5")
    q.add_argument("--budget", type=float, default=math.inf, help="--adaptive: FLOPs (6ND) to add")
    q.add_argument("--k", type=int, default=1, help="--adaptive: runs added per round")
    q.add_argument("--max-n", type=float, default=None, help="--adaptive: largest N allowed")
    q.add_argument(
        "--posterior",
        choices=("laplace-is", "laplace", "nuts"),
        default="laplace-is",
        help="--adaptive: posterior of each refit (laplace-is: Laplace resampled to the "
        "posterior by importance sampling, seconds; laplace: Gaussian, wrong with few points; "
        "nuts: exact, minutes)",
    )
    q.set_defaults(func=_cmd_study)
    for name in COMMANDS:
        _add_command(sub, importlib.import_module(name))
    return parser


def _add_command(sub: argparse._SubParsersAction, module: ModuleType) -> None:
    p = module.add_parser(sub)
    p.set_defaults(func=lambda args, extra: module.run(args))


def _cache_chosen() -> bool:
    return bool(
        os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.environ.get("JAXSCALE_NO_COMPILE_CACHE")
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    if extra and not getattr(args, "takes_extra", False):
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    try:
        if not _cache_chosen():
            # Compiled steps and NUTS programs are reused across invocations (~10 s per fit).
            cache.enable_compilation_cache()
        return int(args.func(args, extra) or 0)
    except (ConfigError, ValueError, FileNotFoundError, PermissionError, OSError) as e:
        if os.environ.get("JAXSCALE_DEBUG"):
            raise
        print(f"jaxscale: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxscale: interrupted", file=sys.stderr)
        return 130
