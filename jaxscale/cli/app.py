"""The `jaxscale` command line: train, flops, sweep, frontier, fit, critical-batch, shape, report."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import textwrap
from collections.abc import Sequence

from jaxscale.cli import report
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
from jaxscale.runs import sweep

FIELD_HELP = {
    "model.d_model": "width: residual-stream size",
    "model.n_layers": "depth: number of transformer blocks",
    "model.n_heads": "attention heads (d_model must divide evenly)",
    "model.d_ff": "MLP hidden size",
    "model.vocab_size": "tokenizer vocabulary (257 for bytes + end-of-document)",
    "model.context_length": "tokens per training sequence",
    "model.activation": "gelu | swiglu",
    "model.norm": "rmsnorm | layernorm",
    "model.position": "rope | learned | none",
    "model.tie_embeddings": "share input embedding and output head",
    "model.param_dtype": "float32 | bfloat16 storage",
    "model.compute_dtype": "float32 | bfloat16 matmuls (bfloat16 pays on TPU/GPU)",
    "model.scan_layers": "lax.scan over depth (fast compile) instead of unrolling",
    "model.remat": "none | full | dots: rematerialise blocks to save memory",
    "model.vocab_multiple": "pad embedding rows to a multiple of this (tensor sharding)",
    "data.corpus": "stdlib (built in) | text file/dir/glob | tokens:PATH | hf:NAME[:SPLIT[:FIELD]]",
    "data.tokenizer": "byte | bpe:PATH.json | bpe:VOCAB_SIZE (trained locally)",
    "data.val_fraction": "fraction of documents held out for evaluation",
    "data.max_bytes": "cap on corpus bytes read (null for all)",
    "data.token_dtype": "uint16 | uint32 for tokens: files",
    "train.batch_size": "global sequences per optimizer step",
    "train.steps": "optimizer steps",
    "train.grad_accum": "microbatches per step (>=2 enables the gradient noise scale)",
    "train.lr": "peak learning rate (AdamW)",
    "train.schedule": "cosine | constant | wsd (warmup-stable-decay)",
    "train.warmup_steps": "linear warmup steps",
    "train.min_lr_ratio": "final LR / peak LR",
    "train.weight_decay": "decoupled weight decay on matrices",
    "train.grad_clip": "global-norm clip (0 disables)",
    "train.eval_every": "steps between validation evaluations",
    "train.eval_batches": "validation batches per evaluation",
    "train.checkpoint_every": "steps between orbax checkpoints",
    "train.keep_checkpoints": "checkpoints kept on disk",
    "train.seed": "init and data-order seed",
    "train.gns": "log the gradient noise scale B_simple (McCandlish et al. 2018)",
    "mesh.spec": "device mesh, e.g. data=-1,fsdp=1,tensor=1",
    "mesh.distributed": "call jax.distributed.initialize (multi-host)",
}


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
            desc = FIELD_HELP.get(key, "")
            lines.append(f"  --{key}={default!s:<24} {desc}")
    return "\n".join(lines)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML/JSON run config (loaded safely)")
    p.add_argument("--width", type=int, help="d_model; derives heads and d_ff by the stated rules")
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
        keep = {
            f.name: getattr(cfg.model, f.name)
            for f in dataclasses.fields(ModelConfig)
            if f.name not in ("d_model", "n_layers", "n_heads", "d_ff")
        }
        model = ModelConfig.from_width_depth(args.width, args.depth, **keep)
        cfg = dataclasses.replace(cfg, model=model)
    # Explicit overrides win over sizes derived from --width/--depth.
    return apply_overrides(cfg, parse_overrides(overrides)) if overrides else cfg
    return cfg


def _cmd_train(args: argparse.Namespace, extra: Sequence[str]) -> int:
    cfg = config_from_args(args, extra)

    run_dir = args.run_dir or os.path.join("runs", cfg.run_id())
    print(
        f"jaxscale train: {cfg.name} [{cfg.run_id()}]  N={cfg.model.n_params_nonembedding:,} "
        f"(total {cfg.model.n_params:,})  d_model={cfg.model.d_model} n_layers="
        f"{cfg.model.n_layers}  {cfg.train.steps} steps x {cfg.tokens_per_step:,} tokens -> {run_dir}"
    )
    s = train.train(cfg, run_dir, progress=not args.no_progress)
    print(summary_paragraph(s, run_dir))
    return 0 if s["status"] in ("done", "preempted") else 3


def _cmd_study(args: argparse.Namespace, extra: Sequence[str]) -> int:

    study = sweep.load_study(args.study)
    runs = study.runs(args.setting)
    conv = args.convention or study.convention
    results = args.results or str(study.default_results(args.setting))
    print(f"jaxscale study {study.name} [{args.setting}]: {len(runs)} runs -> {results}")
    # A failed run (an exception, not divergence) is retried: rerunning a study is the fix.
    rep = sweep.run_sweep(
        runs, results, progress=not args.no_progress, convention=conv, retry_failed=True
    )
    print(
        f"sweep: {rep.done} done, {rep.diverged} diverged, {rep.failed} failed of {rep.total}; "
        f"C spent {rep.flops_spent:.3g} of {rep.flops_planned:.3g} FLOPs ({conv})"
    )
    if rep.preempted:
        print("preempted: run the same command again to continue")
        return rep.exit_code
    if args.no_report:
        return rep.exit_code
    path, lines = report.build_report(
        results, convention=conv, fit_draws=args.fit_draws, fit_warmup=args.fit_draws
    )
    for line in lines:
        print("  " + line)
    print(f"report: {path}")
    return rep.exit_code


def summary_paragraph(s: dict, run_dir: str) -> str:
    """One readable paragraph about a finished run."""
    f = s.get("flops", {}).get("kaplan_attn", float("nan"))
    text = (
        f"Run {s['name']} [{s['run_id']}] {s['status']} after {s['steps']} steps "
        f"({s['tokens']:,} tokens, {f:.3g} FLOPs by 6N+attention). Final validation loss "
        f"{s['loss']:.4f} nats/token (train {s['train_loss']:.4f}); {s['tokens_per_s']:,.0f} tokens/s, "
        f"MFU {100 * s['mfu']:.1f}% of the measured peak; wall {s['wall_time_s']:.1f} s. "
        f"Metrics, summary and checkpoints are in {run_dir}."
    )
    if s["status"] == "preempted":
        text += " Preempted: run the same command again to resume."
    if s["status"] == "diverged":
        text += f" {s.get('error', '')}: lower train.lr or raise warmup."
    return textwrap.fill(text, 100)


# Subcommands contributed by library modules: (module, add_parser fn, run fn).
_PLUGINS = (
    ("jaxscale.cli.flops", "add_flops_parser", "run_flops_cli"),
    ("jaxscale.runs.sweep", "add_sweep_parser", "run_sweep_cli"),
    ("jaxscale.analysis.frontier", "add_frontier_parser", "run_frontier_cli"),
    ("jaxscale.analysis.fit", "add_fit_parser", "run_fit_cli"),
    ("jaxscale.analysis.critical_batch", "add_batch_parser", "run_batch_cli"),
    ("jaxscale.analysis.width_depth", "add_shape_parser", "run_shape_cli"),
    ("jaxscale.cli.report", "add_report_parser", "run_report_cli"),
    ("jaxscale.core.evaluate", "add_eval_parser", "run_eval_cli"),
    ("jaxscale.analysis.shift", "add_shift_parser", "run_shift_cli"),
    ("jaxscale.analysis.lr_sensitivity", "add_lr_parser", "run_lr_cli"),
    ("jaxscale.analysis.sample_efficiency", "add_efficiency_parser", "run_efficiency_cli"),
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
        "directory with checkpoints is resumed; SIGTERM checkpoints and exits 0.",
        epilog=_config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    p.add_argument("--run-dir", help="run directory (default runs/<run_id>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train, takes_extra=True)
    q = sub.add_parser(
        "study",
        help="run a study end to end: sweep -> frontier -> Bayesian fit -> HTML report",
        description="Run every pending run of a study file (resumable, idempotent), then "
        "write <results>/report/report.html with the frontier, the fit and extrapolations.",
    )
    q.add_argument("study", help="study file, e.g. experiments/quickstart.py")
    q.add_argument("--setting", default="default", help="study setting, e.g. tiny")
    q.add_argument("--results", help="results directory (default results/<study>)")
    q.add_argument("--convention", help="FLOP convention for C (default: the study's)")
    q.add_argument("--fit-draws", type=int, default=1000, help="NUTS warmup and draws per chain")
    q.add_argument("--no-report", action="store_true", help="only run the sweep")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.set_defaults(func=_cmd_study)
    for mod, add, run in _PLUGINS:
        m = importlib.import_module(mod)  # a command that cannot load is an error, not a gap
        before = set(sub.choices)
        getattr(m, add)(sub)
        for name in set(sub.choices) - before:
            sub.choices[name].set_defaults(func=_plugin(getattr(m, run)))
    return parser


def _plugin(fn):
    return lambda args, extra: fn(args)


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


