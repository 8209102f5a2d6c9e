"""The study runner: scheduling (groups, task slices), run state on disk, the sweep, status.

The runner keeps one run directory per run, ``<results>/<run_id>/`` (runs.rundir), and claims
each run with its lock so any number of workers (Slurm array tasks, TPU pod hosts, or just two
terminals) can share one results directory on a POSIX filesystem (docs/faults.md says what the
filesystem must provide).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from jaxscale.config import ConfigError, DataConfig, RunConfig
from jaxscale.core import cache, data, flops, train
from jaxscale.runs import branches, store
from jaxscale.runs.grids import DEFAULT_CONVENTION, dedupe, planned_flops, tagged_budget
from jaxscale.runs.rundir import TERMINAL, RunDir, RunMismatch, foreign_run_dirs

TrainFn = Callable[..., dict]
GroupFn = Callable[..., list[dict]]
MAX_GROUP = 8


# --- scheduling -------------------------------------------------------------------------------


def plan(runs: Sequence[RunConfig], max_group: int = MAX_GROUP) -> list[list[RunConfig]]:
    """Groups of runs to train together, in study order: runs identical but for train.seed,
    train.lr and train.weight_decay (LR and λ grids, seed replicates; train.compatible) share
    one vmapped step
    (train.train_group), up to max_group per group; everything else is a group of one. Cooldown
    branches come after every other run, so their trunks train first (runs.branches)."""
    order: list[list[RunConfig]] = []
    newest: list[list[RunConfig]] = []  # the latest group of each compatible family
    for r in branches.order(dedupe(runs)):
        i = next((i for i, g in enumerate(newest) if train.compatible(g[0], r)), None)
        if i is None:
            newest.append([])
            order.append(newest[-1])
            i = len(newest) - 1
        elif len(newest[i]) >= max_group:
            newest[i] = []
            order.append(newest[i])
        newest[i].append(r)
    return order


def task_slice(
    groups: Sequence[list[RunConfig]],
    task_index: int,
    num_tasks: int,
    convention: str = DEFAULT_CONVENTION,
) -> list[list[RunConfig]]:
    """Task `task_index`'s share: groups dealt largest-first to the least-loaded task (LPT),
    a deterministic function of the study so every array task or pod host agrees. A group of
    branches goes to the task of its first branch's trunk, which trains that trunk first."""
    if not (isinstance(num_tasks, int) and num_tasks >= 1):
        raise ConfigError(f"--num-tasks must be >= 1, got {num_tasks!r}")
    if not (isinstance(task_index, int) and 0 <= task_index < num_tasks):
        raise ConfigError(f"--task-index must be in [0, {num_tasks - 1}], got {task_index!r}")
    if num_tasks == 1:
        return list(groups)
    cost = [sum(branches.own_flops(r, convention) for r in g) for g in groups]
    order = sorted(range(len(groups)), key=lambda i: (-cost[i], groups[i][0].run_id()))
    # Trunks are dealt first: their branches then follow them.
    order.sort(key=lambda i: branches.is_branch(groups[i][0]))
    load = [0.0] * num_tasks
    owner: dict[int, int] = {}
    task_of: dict[str, int] = {}
    for i in order:
        trunk = groups[i][0].train.branch_of
        t = task_of.get(trunk, min(range(num_tasks), key=lambda k: (load[k], k)))
        owner[i] = t
        load[t] += cost[i]
        task_of.update((r.run_id(), t) for r in groups[i])
    return [g for i, g in enumerate(groups) if owner[i] == task_index]


# --- run state --------------------------------------------------------------------------------


def study_run_ids(runs: Sequence[RunConfig]) -> set[str]:
    """The run_ids of a study's runs: the directories under its results that belong to it."""
    return {r.run_id() for r in runs}


def foreign_note(runs: Sequence[RunConfig], results: str | Path) -> str | None:
    """One line on the run directories in `results` that are not runs of this study (other
    studies, runs moved aside, copies), or None if there are none."""
    ids = study_run_ids(runs)
    other = foreign_run_dirs(results, ids)
    return _describe_foreign(results, ids, other) if other else None


def _describe_foreign(results: str | Path, ids: set[str], other: Sequence[RunDir]) -> str:
    # A foreign directory holding one of the study's configs would be loaded twice.
    repeats = [r.name for r in other if (r.read_config_raw() or {}).get("run_id") in ids]
    names = ", ".join(r.name for r in other[:3]) + (", …" if len(other) > 3 else "")
    rep = (
        f"; {len(repeats)} repeat a study run's config ({', '.join(repeats[:3])})"
        if repeats
        else ""
    )
    return f"{results} also holds {len(other)} run dir(s) not in this study ({names}){rep}"


def run_state(
    results: str | Path, cfg: RunConfig, *, lock_timeout: float = store.DEFAULT_LOCK_TIMEOUT_S
) -> dict:
    """State of one run on disk (pending / running / interrupted / preempted / done / diverged /
    failed), with its summary and, while a live worker holds it, that worker's lock info."""
    run = RunDir.of(results, cfg)
    summary = run.read_summary()
    holder = run.lock_holder(lock_timeout)
    status = (summary or {}).get("status")
    if status in TERMINAL:
        state = status
    elif holder is not None:
        state = "running"
    elif status == "preempted":
        state = "preempted"
    elif run.has_metrics():
        state = "interrupted"
    else:
        state = "pending"
    return {"run_id": cfg.run_id(), "state": state, "summary": summary, "lock": holder}


# --- runner -----------------------------------------------------------------------------------


@dataclass
class SweepReport:
    """What one runner invocation saw and did."""

    total: int = 0
    done: int = 0
    diverged: int = 0
    failed: int = 0
    running_elsewhere: int = 0  # still held by other live workers when this one finished
    unfinished: int = 0  # left interrupted by other workers; a rerun resumes them
    preempted: bool = False
    trained: list[str] = field(default_factory=list)
    taken_over: list[str] = field(default_factory=list)  # lock lost while training them
    foreign: int = 0  # run dirs in the results directory that are not this study's
    flops_spent: float = 0.0  # this share's own training FLOPs (a branch: its cooldown)
    flops_planned: float = 0.0
    flops_grid: float = 0.0  # the same (N, D) points trained as independent runs

    @property
    def exit_code(self) -> int:
        """0 share finished, 1 some run failed, 3 preempted or unfinished (rerun to resume),
        4 runs held by other live workers (rerun later); unfinished codes win over 1."""
        if self.preempted or self.unfinished:
            return 3
        if self.running_elsewhere:
            return 4
        return 1 if self.failed else 0

    def flops_line(self, convention: str) -> str:
        """C spent of planned and, for a study with branches, the same points trained alone."""
        line = f"C spent {self.flops_spent:.3e} of {self.flops_planned:.3e} ({convention})"
        if self.flops_grid and not math.isclose(self.flops_grid, self.flops_planned):
            line += (
                f"; as independent runs the same (N, D) points cost {self.flops_grid:.3e} "
                f"(this plan: {self.flops_planned / self.flops_grid:.0%})"
            )
        return line

    @property
    def reason(self) -> str:
        """One line on why exit_code is not 0 ('' when it is)."""
        return {
            0: "",
            1: f"{self.failed} run(s) failed (the log above names each); fix the cause, then "
            f"rerun with --retry-failed",
            3: "preempted; rerun the same command to resume"
            if self.preempted
            else f"{self.unfinished} run(s) were left unfinished by other workers; rerun the "
            f"same command to resume them",
            4: f"{self.running_elsewhere} run(s) of this share are held by other live workers; "
            f"rerun later or see `jaxscale sweep status`",
        }[self.exit_code]


class _RealTrainer:
    """train.train and train.train_group with the corpus loaded once per DataConfig."""

    def __init__(self) -> None:
        self._corpora: dict[DataConfig, Any] = {}

    def _corpus(self, dc: DataConfig) -> Any:
        if dc not in self._corpora:
            self._corpora = {dc: data.load_corpus(dc)}  # keep one: corpora can be large
        return self._corpora[dc]

    def __call__(self, cfg: RunConfig, run: RunDir, *, progress: bool = False) -> dict:
        return train.train(cfg, run, progress=progress, corpus=self._corpus(cfg.data))

    def group(
        self, cfgs: Sequence[RunConfig], runs: Sequence[RunDir], *, progress: bool = False
    ) -> list[dict]:
        # plan() groups only runs with one DataConfig, so one corpus serves them all.
        corpus = self._corpus(cfgs[0].data)
        return train.train_group(list(cfgs), list(runs), progress=progress, corpus=corpus)


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
    # A branch spent only its cooldown ("flops_own"); "flops" is its equivalent run's C.
    for key in ("flops_own", "flops"):
        f = (summary or {}).get(key)
        if isinstance(f, dict) and isinstance(f.get(convention), (int, float)):
            return float(f[convention])
    tokens = (summary or {}).get("tokens")
    if isinstance(tokens, (int, float)):
        tokens -= cfg.train.branch_step * cfg.tokens_per_step
        return float(flops.flops_per_token(cfg.model, convention)) * max(tokens, 0)
    return 0.0


def _trunk_waits(results: Path, cfg: RunConfig) -> str | None:
    """Why a branch cannot start yet (its trunk has not finished), or None if it can."""
    if not branches.is_branch(cfg):
        return None
    status = RunDir(results / cfg.train.branch_of).status
    # A failed or diverged trunk may still hold the branch point: the branch says if not.
    if status in TERMINAL:
        return None
    return f"its trunk {cfg.train.branch_of} is {status or 'not finished'}"


def run_sweep(
    runs: Sequence[RunConfig],
    results: str | Path,
    *,
    train_fn: TrainFn | None = None,
    task_index: int = 0,
    num_tasks: int = 1,
    retry_failed: bool = False,
    lock_timeout: float = store.DEFAULT_LOCK_TIMEOUT_S,
    heartbeat_s: float | None = None,
    progress: bool = True,
    convention: str = DEFAULT_CONVENTION,
    log: Callable[[str], None] | None = None,
    group: bool = True,
) -> SweepReport:
    """Train every pending run of this task's slice into <results>/<run_id>/.

    Finished runs (done/diverged, and failed unless retry_failed) are skipped; interrupted ones
    resume from their checkpoints (train_fn does that); runs locked by a live worker, or taken
    over by one while this worker trained them, are left to it. An exception inside a run marks
    it failed (a summary with the error) and the sweep goes on. `train_fn(cfg, run: RunDir,
    progress=...) -> summary` defaults to train.train; with the default trainer, compatible
    pending runs (see `plan`) are trained K at a time in one vmapped step (train.train_group)
    unless group=False. The heartbeat defaults to lock_timeout/10 (store.heartbeat_for);
    SweepReport.exit_code and .reason say whether this task's share is finished.
    """
    heartbeat_s = store.heartbeat_for(lock_timeout, heartbeat_s)
    if "://" in os.fspath(results):
        raise ConfigError(
            f"--results {os.fspath(results)!r}: the runner needs a POSIX directory (local or "
            "mounted) for its lock files; the loader can read URIs afterwards"
        )
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    group_fn: GroupFn | None = None
    if train_fn is None:
        enable_compilation_cache(results)
        trainer = _RealTrainer()
        train_fn = trainer
        # A K-model step runs on one process; multi-host (SPMD) runs train one at a time.
        multihost = os.environ.get("JAXSCALE_DISTRIBUTED") == "1" or any(
            r.mesh.distributed for r in runs
        )
        if group and not multihost:
            group_fn = trainer.group
    branches.check(runs, results)
    groups = task_slice(plan(runs), task_index, num_tasks, convention)
    mine = [r for g in groups for r in g]
    rep = SweepReport(total=len(mine))
    saving = branches.savings(mine, convention)
    rep.flops_planned, rep.flops_grid = saving.spent, saving.grid
    if saving.trunks or saving.branches:
        log(saving.line(convention))
    ids = study_run_ids(runs)
    other = foreign_run_dirs(results, ids)
    rep.foreign = len(other)
    if other:
        log(_describe_foreign(results, ids, other))
    terminal = ("done", "diverged") if retry_failed else TERMINAL

    bar = tqdm(total=len(mine), desc="sweep", unit="run", disable=not progress, file=sys.stderr)

    grid = f" grid={rep.flops_grid:.2e}" if saving.trunks else ""

    def refresh(running: int) -> None:
        bar.set_postfix_str(
            f"done={rep.done} running={running} failed={rep.failed} diverged={rep.diverged} "
            f"C={rep.flops_spent:.2e}/{rep.flops_planned:.2e}{grid}"
        )

    def account(cfg: RunConfig, summary: dict | None) -> None:
        status = (summary or {}).get("status")
        if status in ("done", "diverged", "failed"):
            setattr(rep, status, getattr(rep, status) + 1)
        rep.flops_spent += _spent(summary, cfg, convention)
        bar.update(1)

    try:
        elsewhere: list[RunConfig] = []
        for group_cfgs in groups:
            pending = []
            for cfg in group_cfgs:
                st = run_state(results, cfg, lock_timeout=lock_timeout)
                if st["state"] in terminal:
                    account(cfg, st["summary"])
                    refresh(len(elsewhere))
                elif why := _trunk_waits(results, cfg):
                    log(f"run {cfg.run_id()} ({cfg.name}) waits: {why}; rerun once it is")
                    elsewhere.append(cfg)
                else:
                    pending.append(cfg)
            if not pending:
                continue
            refresh(len(elsewhere) + len(pending))
            statuses = _run_group(
                pending, results, train_fn, group_fn, rep, lock_timeout, heartbeat_s, log, terminal
            )
            for cfg, status in zip(pending, statuses):
                if status in ("locked", "lost"):
                    elsewhere.append(cfg)
                elif status == "mismatch":
                    rep.failed += 1
                    bar.update(1)
                else:
                    account(cfg, RunDir.of(results, cfg).read_summary())
            refresh(len(elsewhere))
            if "preempted" in statuses:
                rep.preempted = True
                break
        # Runs left to other workers count as finished only once they are.
        for cfg in elsewhere:
            st = run_state(results, cfg, lock_timeout=lock_timeout)
            if st["state"] in terminal:
                account(cfg, st["summary"])
            elif st["state"] == "running":
                rep.running_elsewhere += 1
            else:
                rep.unfinished += 1
        refresh(rep.running_elsewhere)
    finally:
        bar.close()
    return rep


def _record_failure(
    cfg: RunConfig, run: RunDir, err: Exception, log: Callable[[str], None]
) -> dict:
    """Mark a run failed (summary + traceback) unless it had already finished."""
    done = run.read_summary()
    if done is not None and done.get("status") in ("done", "diverged"):
        return done
    summary = _failed_summary(cfg, err)
    run.write_error("".join(traceback.format_exception(err)))
    run.write_summary(summary)
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
    """Lock every run it can, then train those (together when group_fn is given). Statuses
    besides a summary's: 'locked' (another worker holds it), 'lost' (another worker took it
    over while this one trained it), 'mismatch' (its directory holds a different run)."""
    statuses = ["locked"] * len(cfgs)
    mine: list[int] = []
    locks: dict[int, store.RunLock] = {}
    with contextlib.ExitStack() as stack:
        for i, cfg in enumerate(cfgs):
            run = RunDir.of(results, cfg)
            lock = run.lock(timeout=lock_timeout, heartbeat_s=heartbeat_s)
            if lock is None:
                continue
            stack.enter_context(lock)
            locks[i] = lock
            # Re-check under the lock: another worker may have finished it since we looked.
            status = run.status
            if status in terminal:
                statuses[i] = status
                continue
            if not run.is_run():  # never overwrite: train_fn's RunDir.claim compares it
                run.write_config(cfg)
            mine.append(i)
        if not mine:
            return statuses
        todo = [cfgs[i] for i in mine]
        dirs = [RunDir.of(results, c) for c in todo]
        outcomes: list[dict | Exception]
        if group_fn is not None and len(todo) > 1:
            try:
                outcomes = list(group_fn(todo, dirs, progress=False))
            except Exception as e:  # a broken group must not stop the sweep
                outcomes = [e] * len(todo)
        else:
            outcomes = []
            for c, d in zip(todo, dirs):
                try:
                    outcomes.append(train_fn(c, d, progress=False))
                except Exception as e:  # a broken run must not stop the sweep
                    outcomes.append(e)
        for i, c, d, out in zip(mine, todo, dirs, outcomes):
            statuses[i] = _settle(c, d, locks[i], out, rep, log)
    return statuses


def _settle(
    cfg: RunConfig,
    run: RunDir,
    lock: store.RunLock,
    out: dict | Exception,
    rep: SweepReport,
    log: Callable[[str], None],
) -> str:
    """A trained run's status, recorded as this worker's only if it still holds the lock."""
    tag = f"run {cfg.run_id()} ({cfg.name})"
    if not lock.verify():
        rep.taken_over.append(cfg.run_id())
        log(
            f"{tag}: another worker took its lock over while this one trained it (heartbeat "
            f"lapsed past the lock timeout); left to that worker"
        )
        return "lost"
    if isinstance(out, RunMismatch):
        # In a group one mismatching directory stops its group-mates too; name the culprit.
        who = "" if Path(out.path) == Path(run.path) else " (a group-mate's directory)"
        log(
            f"{tag} not trained: {out.path}{who} holds a different run "
            f"({'; '.join(out.differences)}); move that directory aside or use another --results"
        )
        return "mismatch"
    summary = _record_failure(cfg, run, out, log) if isinstance(out, Exception) else out
    rep.trained.append(cfg.run_id())
    status = (summary or {}).get("status", "done")
    if status == "diverged":
        log(f"{tag} diverged; kept, sweep continues")
    return status


# --- status table -----------------------------------------------------------------------------


def status_table(
    runs: Sequence[RunConfig],
    results: str | Path,
    *,
    convention: str = DEFAULT_CONVENTION,
    lock_timeout: float = store.DEFAULT_LOCK_TIMEOUT_S,
) -> list[dict]:
    """One row per run: id, name, N, tokens, steps, planned C, state, loss, notes."""
    rows = []
    for cfg in dedupe(runs):
        st = run_state(results, cfg, lock_timeout=lock_timeout)
        s = st["summary"] or {}
        note = s.get("error", "") if st["state"] in ("failed", "diverged") else ""
        if st["state"] == "running":
            lk = st["lock"]
            hb = lk.get("heartbeat")
            age = f"{time.time() - hb:.0f}s" if isinstance(hb, (int, float)) else "?"
            note = f"{lk.get('host')}:{lk.get('pid')} heartbeat {age} ago"
        loss = s.get("loss")
        C = planned_flops(cfg, convention)
        budget = tagged_budget(cfg.name)
        rows.append(
            {
                "run_id": cfg.run_id(),
                "name": cfg.name,
                "N": cfg.model.n_params_nonembedding,
                "tokens": cfg.total_tokens,
                "steps": cfg.train.steps,
                f"C_{convention}": C,
                "vs_budget": f"{C / budget - 1:+.2%}" if budget else "",
                "state": st["state"],
                "loss": loss if isinstance(loss, (int, float)) else math.nan,
                "note": note,
            }
        )
    return rows
