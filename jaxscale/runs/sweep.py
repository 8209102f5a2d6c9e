"""Sweep generators (isoFLOP, N×D, shape, batch, LR grids), study loading and the runner.

A study is a Python file (config as code) exposing ``runs(setting="default") -> list[RunConfig]``
and optionally NAME, DESCRIPTION, SETTINGS and CONVENTION. Study files are executed with the
full rights of the caller, so jaxscale only ever executes a file whose path the user passed on
the command line (or ``experiments/<name>.py`` under the current directory for a bare name);
it never discovers or imports studies on its own.

The runner keeps one directory per run, ``<results>/<run_id>/``, and claims each run with a
lock file (store.RunLock) so any number of workers (Slurm array tasks, TPU pod hosts, or just
two terminals) can share one results directory on a POSIX filesystem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from jaxscale.config import ConfigError, ModelConfig, RunConfig
from jaxscale.core import cache, data, flops, multi, train
from jaxscale.runs import store

DEFAULT_CONVENTION = "kaplan_attn"
TERMINAL = ("done", "diverged", "failed")
TrainFn = Callable[..., dict]
GroupFn = Callable[..., list[dict]]


# --- model and schedule builders ------------------------------------------------------------


def model_for(base: ModelConfig, width: int, depth: int, **kw: Any) -> ModelConfig:
    """A (width, depth) model via ModelConfig.from_width_depth, other fields taken from base."""
    keep = dataclasses.asdict(base)
    for k in ("d_model", "n_layers", "n_heads", "d_ff"):
        keep.pop(k)
    head_dim = kw.pop("head_dim", base.head_dim)
    # SwiGLU's d_ff is already 2/3-scaled by from_width_depth, so its default ratio is 4.
    default_ratio = 4.0 if base.activation == "swiglu" else base.d_ff / base.d_model
    ffn_ratio = kw.pop("ffn_ratio", default_ratio)
    keep.update(kw)
    return ModelConfig.from_width_depth(
        width, depth, head_dim=head_dim, ffn_ratio=ffn_ratio, **keep
    )


def with_steps(base: RunConfig, steps: int, *, evals: int | None = 8, **train_kw: Any) -> RunConfig:
    """base with train.steps set; warmup clipped to a quarter of the run, ~`evals` eval points."""
    tc = dataclasses.replace(base.train, **train_kw) if train_kw else base.train
    warmup = min(tc.warmup_steps, steps // 4)
    eval_every = max(1, steps // evals) if evals else min(tc.eval_every, steps)
    tc = dataclasses.replace(tc, steps=steps, warmup_steps=warmup, eval_every=eval_every)
    return dataclasses.replace(base, train=tc)


def steps_for_tokens(tokens: float, batch_size: int, context_length: int) -> int:
    """Optimizer steps that consume closest to `tokens` (at least one)."""
    return max(1, round(tokens / (batch_size * context_length)))


def _flops_per_token(mc: ModelConfig, convention: str) -> float:

    if convention not in flops.CONVENTIONS:
        raise ConfigError(
            f"unknown FLOP convention {convention!r}; choose one of {list(flops.CONVENTIONS)}"
        )
    return float(flops.flops_per_token(mc, convention))


def planned_flops(cfg: RunConfig, convention: str = DEFAULT_CONVENTION) -> float:
    """Training FLOPs C of the full run under `convention` (flops_per_token × tokens)."""
    return _flops_per_token(cfg.model, convention) * cfg.total_tokens


def _dedupe(runs: Iterable[RunConfig]) -> list[RunConfig]:
    seen: dict[str, RunConfig] = {}
    for r in runs:
        seen.setdefault(r.run_id(), r)
    return list(seen.values())


# --- isoFLOP profiles (Hoffmann et al. 2022, approach 2) ------------------------------------


@dataclass(frozen=True)
class IsoFlopRun:
    """One point of an isoFLOP profile: the run, its target budget and what it really spends."""

    cfg: RunConfig
    budget: float
    flops: float

    @property
    def rel_error(self) -> float:
        """(spent - budget) / budget, from rounding the token count to whole steps."""
        return self.flops / self.budget - 1.0


_BUDGET_TAG = re.compile(r"C(\d\.\d+e[+-]\d+)")


def budget_tag(budget: float) -> str:
    """The tag embedded in run names so the frontier can group isoFLOP profiles exactly."""
    return f"C{budget:.3e}"


def isoflop_plan(
    base: RunConfig,
    budgets: Sequence[float],
    shapes: Sequence[tuple[int, int]] | Mapping[float, Sequence[tuple[int, int]]],
    *,
    convention: str = DEFAULT_CONVENTION,
    batch_size: int | None = None,
    min_steps: int = 20,
    max_rel_error: float = 0.05,
    evals: int | None = 8,
    prefix: str = "iso",
    **model_kw: Any,
) -> list[IsoFlopRun]:
    """Each budget C × each (width, depth): tokens D = C / flops_per_token(N) (Hoffmann 2022 §3.2).

    shapes is one list for every budget, or a {budget: shapes} mapping to centre each profile.
    Steps are round(D / (batch·context)); the rounding error is kept in `rel_error` and must stay
    under max_rel_error. A model needing fewer than min_steps steps is too big for that budget and
    is left out; a budget too small even for the smallest model is an error.
    """
    if not budgets or not shapes:
        raise ConfigError("isoflop_plan: give at least one budget and one (width, depth) shape")
    bs = batch_size or base.train.batch_size
    T = base.model.context_length
    per_budget = shapes if isinstance(shapes, Mapping) else dict.fromkeys(budgets, shapes)
    out: list[IsoFlopRun] = []
    for C in sorted(budgets):
        if not (isinstance(C, (int, float)) and math.isfinite(C) and C > 0):
            raise ConfigError(f"isoflop_plan: budget {C!r} must be a positive number of FLOPs")
        if C not in per_budget:
            raise ConfigError(f"isoflop_plan: no shapes given for budget {C:.3e}")
        models = sorted(
            (model_for(base.model, w, d, **model_kw) for w, d in per_budget[C]),
            key=lambda m: _flops_per_token(m, convention),
        )
        fits = 0
        for mc in models:
            fpt = _flops_per_token(mc, convention)
            steps = steps_for_tokens(C / fpt, bs, T)
            if C / fpt / (bs * T) < min_steps - 0.5:
                continue
            cfg = with_steps(dataclasses.replace(base, model=mc), steps, evals=evals, batch_size=bs)
            cfg = dataclasses.replace(
                cfg,
                name=f"{prefix}_{budget_tag(C)}_N{mc.n_params_nonembedding}"
                f"_w{mc.d_model}_d{mc.n_layers}",
            )
            run = IsoFlopRun(cfg, float(C), fpt * cfg.total_tokens)
            if abs(run.rel_error) > max_rel_error:
                raise ConfigError(
                    f"isoflop_plan: {cfg.name} spends {run.flops:.3e} FLOPs, "
                    f"{run.rel_error:+.1%} off its budget {C:.3e} (limit {max_rel_error:.0%}) "
                    f"because steps round to {steps}; lower batch_size or raise the budget"
                )
            out.append(run)
            fits += 1
        if not fits:
            small = models[0]
            cost = _flops_per_token(small, convention) * min_steps * bs * T
            raise ConfigError(
                f"isoflop_plan: budget C={C:.3e} FLOPs ({convention}) is too small for the "
                f"smallest model (d_model={small.d_model}, n_layers={small.n_layers}, "
                f"N={small.n_params_nonembedding:,}), which costs {cost:.3e} FLOPs for "
                f"min_steps={min_steps} steps of {bs}×{T} tokens; raise the budget to at least "
                f"{cost:.3e}, add smaller shapes, or lower batch_size/min_steps"
            )
    return out


def isoflop_runs(base: RunConfig, budgets, shapes, **kw: Any) -> list[RunConfig]:
    """The RunConfigs of isoflop_plan (see there)."""
    return _dedupe(r.cfg for r in isoflop_plan(base, budgets, shapes, **kw))


# --- N × D, shape, batch and learning-rate grids --------------------------------------------


def nd_grid_runs(
    base: RunConfig,
    shapes: Sequence[tuple[int, int]],
    tokens: Sequence[float],
    *,
    evals: int | None = 8,
    prefix: str = "nd",
    **model_kw: Any,
) -> list[RunConfig]:
    """Every (width, depth) × every token count D, to fit L(N, D) jointly (Hoffmann 2022 §3.3)."""
    bs, T = base.train.batch_size, base.model.context_length
    out = []
    for w, d in shapes:
        mc = model_for(base.model, w, d, **model_kw)
        for D in tokens:
            cfg = with_steps(
                dataclasses.replace(base, model=mc), steps_for_tokens(D, bs, T), evals=evals
            )
            out.append(
                dataclasses.replace(
                    cfg, name=f"{prefix}_N{mc.n_params_nonembedding}_D{cfg.total_tokens:.2e}"
                )
            )
    return _dedupe(out)


def shape_for_params(
    base: ModelConfig, n_nonembedding: int, depth: int, *, granularity: int | None = None, **kw
) -> ModelConfig:
    """The width (a multiple of head_dim) at `depth` whose non-embedding N is closest to target."""
    head_dim = kw.get("head_dim", base.head_dim)
    g = granularity or head_dim
    # N ≈ depth·c·w² (Kaplan 2020 eq. 2.1 with c = 12 for a 4× GELU MLP), so start near the root.
    guess = math.sqrt(n_nonembedding / (12 * depth))
    cands = {max(g, g * k) for k in range(int(guess // g) - 2, int(guess // g) + 4)}
    models = []
    for w in sorted(cands):
        try:
            models.append(model_for(base, w, depth, **kw))
        except ConfigError:
            continue
    if not models:
        raise ConfigError(f"shape_for_params: no valid width near {guess:.0f} at depth {depth}")
    return min(models, key=lambda m: abs(m.n_params_nonembedding - n_nonembedding))


def shape_grid_runs(
    base: RunConfig,
    n_nonembedding: int,
    depths: Sequence[int],
    *,
    rtol: float = 0.15,
    tokens: float | None = None,
    evals: int | None = 8,
    prefix: str = "shape",
    **model_kw: Any,
) -> list[RunConfig]:
    """(n_layers, d_model) pairs at a fixed non-embedding N (Kaplan 2020 Fig. 5) for given
    depths; shapes that miss the target by more than rtol are dropped. The width-vs-depth
    study (experiments/shape.py) uses shape.shape_runs, which also spaces shapes evenly in
    aspect ratio over >= 1.5 decades and reports each one's deviation."""
    out = []
    steps = (
        steps_for_tokens(tokens, base.train.batch_size, base.model.context_length)
        if tokens
        else base.train.steps
    )
    for depth in depths:
        mc = shape_for_params(base.model, n_nonembedding, depth, **model_kw)
        if abs(mc.n_params_nonembedding / n_nonembedding - 1) > rtol:
            continue
        cfg = with_steps(dataclasses.replace(base, model=mc), steps, evals=evals)
        out.append(
            dataclasses.replace(
                cfg,
                name=f"{prefix}_N{mc.n_params_nonembedding}_d{depth}_w{mc.d_model}",
            )
        )
    if len(out) < 2:
        raise ConfigError(
            f"shape_grid_runs: only {len(out)} depth(s) of {list(depths)} reach "
            f"N={n_nonembedding:,} within {rtol:.0%}; use depths that fit that size"
        )
    return _dedupe(out)


def batch_grid_runs(
    base: RunConfig,
    batch_sizes: Sequence[int],
    *,
    tokens: float | None = None,
    evals: int | None = 8,
    prefix: str = "batch",
) -> list[RunConfig]:
    """train.batch_size varied at a fixed model; fixed token count if given, else fixed steps."""
    out = []
    for B in batch_sizes:
        steps = (
            steps_for_tokens(tokens, B, base.model.context_length) if tokens else base.train.steps
        )
        cfg = with_steps(base, steps, evals=evals, batch_size=B)
        out.append(dataclasses.replace(cfg, name=f"{prefix}_B{B}_S{steps}"))
    return _dedupe(out)


def lr_grid_runs(
    base: RunConfig,
    shapes: Sequence[tuple[int, int]],
    lrs: Sequence[float],
    *,
    tokens: float | None = None,
    evals: int | None = 8,
    prefix: str = "lr",
    **model_kw: Any,
) -> list[RunConfig]:
    """train.lr × model size, for per-size learning-rate tuning."""
    out = []
    for w, d in shapes:
        mc = model_for(base.model, w, d, **model_kw)
        steps = (
            steps_for_tokens(tokens, base.train.batch_size, mc.context_length)
            if tokens
            else base.train.steps
        )
        for lr in lrs:
            cfg = with_steps(dataclasses.replace(base, model=mc), steps, evals=evals, lr=lr)
            out.append(
                dataclasses.replace(cfg, name=f"{prefix}_N{mc.n_params_nonembedding}_lr{lr:.2e}")
            )
    return _dedupe(out)


# --- studies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    """A loaded study file: its name, settings and run generator."""

    name: str
    path: Path
    description: str
    settings: tuple[str, ...]
    convention: str
    runs_fn: Callable[..., list[RunConfig]] = field(repr=False)

    def runs(self, setting: str = "default") -> list[RunConfig]:
        """The study's runs for `setting`, validated and de-duplicated by run_id."""
        if self.settings and setting not in self.settings:
            raise ConfigError(
                f"study {self.name!r} has no setting {setting!r}; "
                f"choose one of {list(self.settings)}"
            )
        runs = self.runs_fn(setting)
        if not isinstance(runs, (list, tuple)) or not runs:
            raise ConfigError(f"{self.path}: runs({setting!r}) must return a non-empty list")
        bad = [type(r).__name__ for r in runs if not isinstance(r, RunConfig)]
        if bad:
            raise ConfigError(f"{self.path}: runs() returned non-RunConfig items ({bad[0]})")
        return _dedupe(runs)

    def default_results(self, setting: str = "default") -> Path:
        """results/<name> (results/<name>-<setting> for other settings) under the cwd."""
        return Path("results") / (self.name if setting == "default" else f"{self.name}-{setting}")


def resolve_study_path(study: str | Path) -> Path:
    """The file the user named, or experiments/<name>.py under the cwd for a bare name."""
    p = Path(study)
    if p.is_file():
        return p
    if p.suffix != ".py" and p.parent == Path("."):
        q = Path("experiments") / f"{p.name}.py"
        if q.is_file():
            return q
    raise ConfigError(
        f"study {str(study)!r} not found; pass the path of a study file, e.g. "
        f"experiments/quickstart.py"
    )


def load_study(study: str | Path) -> Study:
    """Execute a study file the user named and wrap its runs() (see module docstring)."""
    path = resolve_study_path(study)
    modname = f"jaxscale_study_{path.stem}"
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load study file {str(path)!r}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    fn = getattr(mod, "runs", None)
    if not callable(fn):
        raise ConfigError(
            f"{path}: a study file must define `def runs(setting: str = 'default') "
            f"-> list[RunConfig]`"
        )
    doc = (mod.__doc__ or "").strip()
    return Study(
        name=str(getattr(mod, "NAME", path.stem)),
        path=path,
        description=str(getattr(mod, "DESCRIPTION", doc.splitlines()[0] if doc else "")),
        settings=tuple(getattr(mod, "SETTINGS", ())),
        convention=str(getattr(mod, "CONVENTION", DEFAULT_CONVENTION)),
        runs_fn=fn,
    )


# --- scheduling -------------------------------------------------------------------------------


MAX_GROUP = 8


def _group_key(cfg: RunConfig) -> tuple:
    """What must match for runs to share one vmapped step (see multi.compatible)."""
    tc = dataclasses.replace(cfg.train, seed=0, lr=1.0)
    return (cfg.model, cfg.data, tc, cfg.mesh)


def plan(runs: Sequence[RunConfig], max_group: int = MAX_GROUP) -> list[list[RunConfig]]:
    """Groups of runs to train together, in study order: runs identical but for train.seed and
    train.lr (LR grids, seed replicates) share one vmapped step (multi.train_group), up to
    max_group per group; everything else is a group of one."""
    groups: dict[tuple, list[list[RunConfig]]] = {}
    order: list[list[RunConfig]] = []
    for r in _dedupe(runs):
        chunks = groups.setdefault(_group_key(r), [])
        if not chunks or len(chunks[-1]) >= max_group:
            chunks.append([])
            order.append(chunks[-1])
        chunks[-1].append(r)
    return order


def task_slice(
    groups: Sequence[list[RunConfig]],
    task_index: int,
    num_tasks: int,
    convention: str = DEFAULT_CONVENTION,
) -> list[list[RunConfig]]:
    """Task `task_index`'s share: groups dealt largest-first to the least-loaded task (LPT),
    a deterministic function of the study so every array task or pod host agrees."""
    if not (isinstance(num_tasks, int) and num_tasks >= 1):
        raise ConfigError(f"--num-tasks must be >= 1, got {num_tasks!r}")
    if not (isinstance(task_index, int) and 0 <= task_index < num_tasks):
        raise ConfigError(f"--task-index must be in [0, {num_tasks - 1}], got {task_index!r}")
    if num_tasks == 1:
        return list(groups)
    cost = [sum(planned_flops(r, convention) for r in g) for g in groups]
    order = sorted(range(len(groups)), key=lambda i: (-cost[i], groups[i][0].run_id()))
    load = [0.0] * num_tasks
    owner = {}
    for i in order:
        t = min(range(num_tasks), key=lambda k: (load[k], k))
        owner[i] = t
        load[t] += cost[i]
    return [g for i, g in enumerate(groups) if owner[i] == task_index]


# --- run state --------------------------------------------------------------------------------


def run_state(results: str | Path, cfg: RunConfig, *, lock_timeout: float = 300.0) -> dict:
    """State of one run on disk: pending / running / done / diverged / failed / preempted."""
    run_dir = Path(results) / cfg.run_id()
    summary = store.read_json(run_dir / "summary.json") if run_dir.exists() else None
    lock = store.lock_info(run_dir) if run_dir.exists() else None
    live = lock is not None and not store.lock_is_stale(lock, lock_timeout)
    if summary is not None and summary.get("status") in TERMINAL:
        state = summary["status"]
    elif live:
        state = "running"
    elif summary is not None and summary.get("status") == "preempted":
        state = "preempted"
    elif (run_dir / "metrics.jsonl").exists():
        state = "interrupted"
    else:
        state = "pending"
    return {"run_id": cfg.run_id(), "state": state, "summary": summary, "lock": lock}


# --- runner -----------------------------------------------------------------------------------


@dataclass
class SweepReport:
    """What one runner invocation saw and did."""

    total: int = 0
    done: int = 0
    diverged: int = 0
    failed: int = 0
    running_elsewhere: int = 0
    preempted: bool = False
    trained: list[str] = field(default_factory=list)
    flops_spent: float = 0.0
    flops_planned: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 all finished, 1 some failed, 3 stopped by preemption (requeue and rerun)."""
        return 3 if self.preempted else (1 if self.failed else 0)


class _RealTrainer:
    """train.train with the corpus loaded once per DataConfig and progress off."""

    def __init__(self) -> None:
        self._corpora: dict[Any, Any] = {}

    def __call__(self, cfg: RunConfig, run_dir: Path, *, progress: bool = False) -> dict:

        if cfg.data not in self._corpora:
            self._corpora = {cfg.data: data.load_corpus(cfg.data)}
        return train.train(cfg, run_dir, progress=progress, corpus=self._corpora[cfg.data])


def enable_compilation_cache(results: Path) -> None:
    """Persist compiled executables in <results>/.jax_cache so reruns skip compiles, unless the
    user (or the CLI) chose a cache already."""

    if not cache.user_chose_compilation_cache():
        cache.enable_compilation_cache(results / ".jax_cache")


def _failed_summary(cfg: RunConfig, err: BaseException) -> dict:
    mc = cfg.model
    return {
        "status": "failed",
        "run_id": cfg.run_id(),
        "name": cfg.name,
        "error": f"{type(err).__name__}: {err}",
        "n_params": mc.n_params,
        "n_params_nonembedding": mc.n_params_nonembedding,
        "n_params_embedding": mc.n_params_embedding,
        "time": time.time(),
    }


def _spent(summary: dict | None, cfg: RunConfig, convention: str) -> float:
    f = (summary or {}).get("flops")
    if isinstance(f, dict) and isinstance(f.get(convention), (int, float)):
        return float(f[convention])
    tokens = (summary or {}).get("tokens")
    if isinstance(tokens, (int, float)):
        return _flops_per_token(cfg.model, convention) * tokens
    return 0.0


def run_sweep(
    runs: Sequence[RunConfig],
    results: str | Path,
    *,
    train_fn: TrainFn | None = None,
    task_index: int = 0,
    num_tasks: int = 1,
    retry_failed: bool = False,
    lock_timeout: float = 300.0,
    heartbeat_s: float = 30.0,
    progress: bool = True,
    convention: str = DEFAULT_CONVENTION,
    log: Callable[[str], None] | None = None,
    group: bool = True,
) -> SweepReport:
    """Train every pending run of this task's slice into <results>/<run_id>/.

    Finished runs (done/diverged, and failed unless retry_failed) are skipped; interrupted ones
    resume from their checkpoints (train_fn does that); runs locked by a live worker are left to
    it. An exception inside a run marks it failed (summary.json with the error) and the sweep
    goes on. `train_fn(cfg, run_dir, progress=...) -> summary` defaults to jaxscale.train.train;
    with the default trainer, compatible pending runs (see `plan`) are trained K at a time in one
    vmapped step (multi.train_group) unless group=False.
    """

    results = Path(results)
    if "://" in str(results):
        raise ConfigError(
            f"--results {str(results)!r}: the runner needs a POSIX directory (local or mounted) "
            "for its lock files; the loader can read URIs afterwards"
        )
    results.mkdir(parents=True, exist_ok=True)
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    group_fn: GroupFn | None = None
    if train_fn is None:
        enable_compilation_cache(results)
        train_fn = _RealTrainer()
        # A K-model step runs on one process; multi-host (SPMD) runs train one at a time.
        multihost = os.environ.get("JAXSCALE_DISTRIBUTED") == "1" or any(
            r.mesh.distributed for r in runs
        )
        if group and not multihost:
            group_fn = multi.train_group
    groups = task_slice(plan(runs), task_index, num_tasks, convention)
    mine = [r for g in groups for r in g]
    rep = SweepReport(total=len(mine))
    rep.flops_planned = sum(planned_flops(r, convention) for r in mine)
    terminal = ("done", "diverged") if retry_failed else TERMINAL

    bar = tqdm(total=len(mine), desc="sweep", unit="run", disable=not progress, file=sys.stderr)

    def refresh(running: int) -> None:
        bar.set_postfix_str(
            f"done={rep.done} running={running} failed={rep.failed} diverged={rep.diverged} "
            f"C={rep.flops_spent:.2e}/{rep.flops_planned:.2e}"
        )

    def account(cfg: RunConfig, summary: dict | None) -> None:
        status = (summary or {}).get("status")
        if status in ("done", "diverged", "failed"):
            setattr(rep, status, getattr(rep, status) + 1)
        rep.flops_spent += _spent(summary, cfg, convention)
        bar.update(1)

    try:
        elsewhere: list[RunConfig] = []
        for group in groups:
            pending = []
            for cfg in group:
                st = run_state(results, cfg, lock_timeout=lock_timeout)
                if st["state"] in terminal:
                    account(cfg, st["summary"])
                    refresh(len(elsewhere))
                else:
                    pending.append(cfg)
            if not pending:
                continue
            refresh(len(elsewhere) + len(pending))
            statuses = _run_group(
                pending, results, train_fn, group_fn, rep, lock_timeout, heartbeat_s, log, terminal
            )
            for cfg, status in zip(pending, statuses):
                if status == "locked":
                    elsewhere.append(cfg)
                else:
                    account(cfg, store.read_json(results / cfg.run_id() / "summary.json"))
            refresh(len(elsewhere))
            if "preempted" in statuses:
                rep.preempted = True
                log("preempted; rerun the same command to resume")
                break
        rep.running_elsewhere = len(elsewhere)
        if elsewhere and not rep.preempted:
            log(
                f"{len(elsewhere)} run(s) are held by other live workers and were left to them; "
                f"`jaxscale sweep status` shows their progress"
            )
    finally:
        bar.close()
    return rep


def _record_failure(cfg: RunConfig, run_dir: Path, err: Exception, log) -> dict:
    """Mark a run failed (summary + traceback) unless it had already finished."""
    done = store.read_json(run_dir / "summary.json")
    if done is not None and done.get("status") in ("done", "diverged"):
        return done
    summary = _failed_summary(cfg, err)
    (run_dir / "error.txt").write_text(traceback.format_exc())
    store.write_json_atomic(run_dir / "summary.json", summary)
    log(f"run {cfg.run_id()} ({cfg.name}) failed: {summary['error']}")
    return summary


def _run_group(
    cfgs: Sequence[RunConfig],
    results: Path,
    train_fn: TrainFn,
    group_fn: GroupFn | None,
    rep: SweepReport,
    lock_timeout: float,
    heartbeat_s: float,
    log: Callable[[str], None],
    terminal: tuple[str, ...] = TERMINAL,
) -> list[str]:
    """Train runs under their locks; returns each run's final status, or 'locked' for runs
    another worker holds. With a group trainer the runs share one vmapped step; otherwise each
    is locked only while it trains (so other workers can take the rest) and a preemption stops
    the loop (statuses then cover only the runs reached)."""
    if group_fn is not None and len(cfgs) > 1:
        return _run_locked(
            cfgs, results, train_fn, group_fn, rep, lock_timeout, heartbeat_s, log, terminal
        )
    statuses: list[str] = []
    for cfg in cfgs:
        statuses += _run_locked(
            [cfg], results, train_fn, None, rep, lock_timeout, heartbeat_s, log, terminal
        )
        if statuses[-1] == "preempted":
            break
    return statuses


def _run_locked(
    cfgs: Sequence[RunConfig],
    results: Path,
    train_fn: TrainFn,
    group_fn: GroupFn | None,
    rep: SweepReport,
    lock_timeout: float,
    heartbeat_s: float,
    log: Callable[[str], None],
    terminal: tuple[str, ...],
) -> list[str]:
    """Lock every run it can, then train those (together when group_fn is given)."""
    statuses = ["locked"] * len(cfgs)
    mine: list[int] = []
    with contextlib.ExitStack() as stack:
        for i, cfg in enumerate(cfgs):
            run_dir = results / cfg.run_id()
            lock = store.RunLock.acquire(run_dir, timeout=lock_timeout, heartbeat_s=heartbeat_s)
            if lock is None:
                continue
            stack.enter_context(lock)
            # Re-check under the lock: another worker may have finished it since we looked.
            summary = store.read_json(run_dir / "summary.json")
            if summary is not None and summary.get("status") in terminal:
                statuses[i] = summary["status"]
                continue
            store.write_json_atomic(
                run_dir / "config.json", {**cfg.to_dict(), "run_id": cfg.run_id()}
            )
            mine.append(i)
        if not mine:
            return statuses
        todo = [cfgs[i] for i in mine]
        dirs = [results / c.run_id() for c in todo]
        if group_fn is not None and len(todo) > 1:
            try:
                summaries = group_fn(todo, dirs, progress=False)
            except Exception as e:  # a broken group must not stop the sweep
                summaries = [_record_failure(c, d, e, log) for c, d in zip(todo, dirs)]
        else:
            summaries = []
            for c, d in zip(todo, dirs):
                try:
                    summaries.append(train_fn(c, d, progress=False))
                except Exception as e:  # a broken run must not stop the sweep
                    summaries.append(_record_failure(c, d, e, log))
        for i, c, summary in zip(mine, todo, summaries):
            rep.trained.append(c.run_id())
            statuses[i] = (summary or {}).get("status", "done")
            if statuses[i] == "diverged":
                log(f"run {c.run_id()} ({c.name}) diverged; kept, sweep continues")
    return statuses


# --- status table -----------------------------------------------------------------------------


def status_table(
    runs: Sequence[RunConfig],
    results: str | Path,
    *,
    convention: str = DEFAULT_CONVENTION,
    lock_timeout: float = 300.0,
) -> list[dict]:
    """One row per run: id, name, N, tokens, steps, planned C, state, loss, notes."""
    rows = []
    for cfg in _dedupe(runs):
        st = run_state(results, cfg, lock_timeout=lock_timeout)
        s = st["summary"] or {}
        note = s.get("error", "") if st["state"] in ("failed", "diverged") else ""
        if st["state"] == "running" and st["lock"]:
            lk = st["lock"]
            hb = lk.get("heartbeat")
            age = f"{time.time() - hb:.0f}s" if isinstance(hb, (int, float)) else "?"
            note = f"{lk.get('host')}:{lk.get('pid')} heartbeat {age} ago"
        loss = s.get("loss")
        C = planned_flops(cfg, convention)
        tag = _BUDGET_TAG.search(cfg.name)
        rows.append(
            {
                "run_id": cfg.run_id(),
                "name": cfg.name,
                "N": cfg.model.n_params_nonembedding,
                "tokens": cfg.total_tokens,
                "steps": cfg.train.steps,
                f"C_{convention}": C,
                "vs_budget": f"{C / float(tag.group(1)) - 1:+.2%}" if tag else "",
                "state": st["state"],
                "loss": loss if isinstance(loss, (int, float)) else math.nan,
                "note": note,
            }
        )
    return rows


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


# --- CLI --------------------------------------------------------------------------------------


def add_sweep_parser(subparsers: Any) -> None:
    """`jaxscale sweep run|status STUDY ...`."""
    p = subparsers.add_parser(
        "sweep",
        help="run or inspect a study (a Python file in experiments/)",
        description="Run a study's runs into a results directory, or show their status. "
        "Study files are Python and are executed: only pass files you trust. Any number of "
        "workers may share one results directory (per-run lock files). `run` exits 0 when its "
        "share is finished, 1 if some run failed, 3 if preempted (rerun to resume).",
    )
    sub = p.add_subparsers(dest="sweep_cmd", required=True)
    for name, hlp in (("run", "train every pending run"), ("status", "print a status table")):
        q = sub.add_parser(name, help=hlp)
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
            default=300.0,
            help="seconds without heartbeat before another host's lock counts as stale",
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


def run_sweep_cli(args: Any) -> int:
    """Entry point for `jaxscale sweep`."""
    try:
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
            return 0
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
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"done {rep.done}, diverged {rep.diverged}, failed {rep.failed}, "
        f"held by other workers {rep.running_elsewhere} of {rep.total}; trained {len(rep.trained)} "
        f"now; C spent {rep.flops_spent:.3e} of {rep.flops_planned:.3e} ({conv})",
        file=sys.stderr,
    )
    return rep.exit_code
