"""Trunks and cooldown branches: a study's column of token counts at a fraction of the compute.

Hägele et al. 2024 ("Scaling Laws and Compute-Optimal Training Beyond Fixed Training
Durations", Sec. 3-4): a warmup-stable-decay run of length D equals a constant-LR run up to
its decay start followed by a short cooldown, and a (1-sqrt) cooldown of 10-20% of the steps
matches a cosine run of length D. So one constant-LR *trunk* per model, checkpointed at each
branch point, plus one cooldown *branch* per token count gives the whole column of an N×D grid.

`branched(runs)` turns a study's independent runs into trunks + branches: runs identical but for
their length share a trunk (train.branch_points: the steps it keeps), and each becomes a branch
(train.branch_of = the trunk's run_id, train.branch_step = its decay start) whose config is the
independent wsd run it stands for; so its run ID names the trunk and the branch step, its D and
C are those of that run, and the frontier and fit read it like any run. Its own spend is only its
cooldown (summary "flops_own"); `savings` compares the study's spend with the independent grid.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from jaxscale.config import ConfigError, RunConfig
from jaxscale.core import flops
from jaxscale.runs.grids import DEFAULT_CONVENTION, dedupe, planned_flops
from jaxscale.runs.rundir import RunDir

COOLDOWN = 0.2  # Hägele et al. 2024 Fig. 5: 10-20% cooldowns match cosine
SHAPE = "1-sqrt"  # Hägele et al. 2024 Sec. 3 / Fig. 4: beats linear at equal length


def is_trunk(cfg: RunConfig) -> bool:
    """True for a constant-LR trunk that keeps checkpoints for branches."""
    return bool(cfg.train.branch_points)


def is_branch(cfg: RunConfig) -> bool:
    """True for a cooldown branch started from a trunk's checkpoint."""
    return bool(cfg.train.branch_of)


def _family(cfg: RunConfig) -> tuple:
    """What a trunk and its branches share: all but length, schedule and bookkeeping."""
    tc = dataclasses.replace(
        cfg.train,
        steps=1,
        warmup_steps=0,
        eval_every=1,
        schedule="constant",
        decay_fraction=0.2,
        cooldown_shape="linear",
        branch_of="",
        branch_step=0,
        branch_points=(),
        lr_rule="",
        batch_rule="",
    )
    return (cfg.model, cfg.data, tc)


def branched(
    runs: Iterable[RunConfig],
    *,
    cooldown: float = COOLDOWN,
    shape: str = SHAPE,
    trunk_evals: int = 8,
) -> list[RunConfig]:
    """Trunks, then branches, standing for `runs` (see the module docstring).

    Each run becomes a wsd run with a `cooldown` fraction of its steps decayed in `shape`
    (linear or 1-sqrt), branched off at its decay start; runs sharing everything but their
    length share one constant-LR trunk, as long as the latest branch point, with the family's
    shortest warmup (so every branch's schedule equals its trunk's up to the branch point). A
    run alone in its family stays an independent run (same schedule, no trunk).
    """
    runs = dedupe(runs)
    if not 0 < cooldown <= 1:
        raise ConfigError(f"branched: cooldown must be in (0, 1], got {cooldown}")
    families: dict[tuple, list[RunConfig]] = {}
    for r in runs:
        if is_branch(r) or is_trunk(r):
            raise ConfigError(f"branched: {r.name!r} is already a trunk or branch; pass plain runs")
        families.setdefault(_family(r), []).append(r)
    trunks: list[RunConfig] = []
    branches: list[RunConfig] = []
    for members in families.values():
        warm = min(m.train.warmup_steps for m in members)
        cools = []
        for m in members:
            tc = dataclasses.replace(
                m.train,
                schedule="wsd",
                decay_fraction=cooldown,
                cooldown_shape=shape,
                warmup_steps=warm,
            )
            if tc.decay_start < 1:
                raise ConfigError(
                    f"branched: {m.name!r} ({tc.steps} steps, warmup {warm}) would cool down "
                    f"from step 0; lower cooldown below {cooldown} or add warmup steps"
                )
            cools.append((m, tc))
        if len(cools) == 1:
            # A trunk with one branch saves nothing and costs a run: train it from scratch.
            branches.append(dataclasses.replace(cools[0][0], train=cools[0][1]))
            continue
        points = tuple(sorted({tc.decay_start for _, tc in cools}))
        first = members[0]
        top = points[-1]
        trunk = dataclasses.replace(
            first,
            train=dataclasses.replace(
                first.train,
                schedule="constant",
                steps=top,
                warmup_steps=warm,
                eval_every=max(1, top // trunk_evals),
                branch_points=points,
            ),
            name=_trunk_name(first),
        )
        trunks.append(trunk)
        tid = trunk.run_id()
        for m, tc in cools:
            tc = dataclasses.replace(tc, branch_of=tid, branch_step=tc.decay_start)
            branches.append(dataclasses.replace(m, train=tc, name=f"{m.name}_branch"))
    return trunks + branches


def independent(runs: Iterable[RunConfig]) -> list[RunConfig]:
    """The independent runs the branches of `runs` stand for (trunks dropped): each branch's
    own wsd config, trained from scratch; the comparison grid of a branched study."""
    out = []
    for r in runs:
        if is_branch(r):
            tc = dataclasses.replace(r.train, branch_of="", branch_step=0)
            out.append(dataclasses.replace(r, train=tc, name=r.name.replace("_branch", "_indep")))
        elif not is_trunk(r):
            out.append(r)
    return out


def _trunk_name(cfg: RunConfig) -> str:
    mc = cfg.model
    prefix = cfg.name.split("_")[0]
    seed = f"_seed{cfg.train.seed}" if cfg.train.seed else ""
    return f"{prefix}_trunk_N{mc.n_params_nonembedding}_w{mc.d_model}_d{mc.n_layers}{seed}"


def check(runs: Sequence[RunConfig], results: str | Path | None = None) -> None:
    """ConfigError (one line) for a branch whose trunk is neither in `runs` nor in `results`,
    or whose trunk differs from it beyond length and schedule, or does not keep its step."""
    trunks = {r.run_id(): r for r in runs if is_trunk(r)}
    for b in runs:
        if not is_branch(b):
            continue
        tid, step = b.train.branch_of, b.train.branch_step
        t = trunks.get(tid)
        if t is None:
            on_disk = results is not None and RunDir(Path(results) / tid).is_run()
            if on_disk:
                continue
            raise ConfigError(
                f"branch {b.name!r}: its trunk {tid} is not in the study"
                + (f" nor in {results}" if results is not None else "")
                + "; add the trunk to runs() (runs.branches.branched builds both)"
            )
        if _family(t) != _family(b):
            raise ConfigError(
                f"branch {b.name!r} differs from its trunk {t.name!r} beyond length and schedule "
                f"(model, data, seed, lr, batch, optimizer must match); rebuild both with "
                f"runs.branches.branched"
            )
        if step not in t.train.branch_points or t.train.warmup_steps != b.train.warmup_steps:
            raise ConfigError(
                f"branch {b.name!r}: trunk {t.name!r} does not keep step {step} (its "
                f"branch_points {list(t.train.branch_points)}, warmup {t.train.warmup_steps}); "
                f"add it to the trunk's train.branch_points"
            )


def order(runs: Iterable[RunConfig]) -> list[RunConfig]:
    """Runs with every branch after the non-branches (so trunks train first), order kept."""
    runs = list(runs)
    return [r for r in runs if not is_branch(r)] + [r for r in runs if is_branch(r)]


def own_flops(cfg: RunConfig, convention: str = DEFAULT_CONVENTION) -> float:
    """FLOPs this run itself trains: a branch only its steps after the branch point."""
    steps = cfg.train.steps - cfg.train.branch_step
    return flops.flops_per_token(cfg.model, convention) * cfg.tokens_per_step * steps


@dataclass(frozen=True)
class Savings:
    """A study's training FLOPs against the independent runs of the same (N, D) points."""

    spent: float  # trunks in full, branches their cooldowns, other runs in full
    grid: float  # every run but the trunks, trained from scratch
    trunks: int
    branches: int

    @property
    def ratio(self) -> float:
        """spent / grid (NaN for an empty grid)."""
        return self.spent / self.grid if self.grid else math.nan

    def line(self, convention: str = DEFAULT_CONVENTION) -> str:
        """One line: what the study spends, and what the grid would have cost."""
        return (
            f"{self.trunks} trunk(s) + {self.branches} branch(es): {self.spent:.3e} FLOPs "
            f"({convention}), {self.ratio:.0%} of the {self.grid:.3e} the same (N, D) points "
            f"cost as independent runs"
        )


def table_savings(runs_df: pd.DataFrame, convention: str = DEFAULT_CONVENTION) -> Savings | None:
    """The Savings of the runs in a results table (runs.results.load) as trained, or None if
    none is a trunk or branch."""
    if "train.branch_of" not in runs_df or not len(runs_df):
        return None
    is_b = runs_df["train.branch_of"].fillna("").astype(str) != ""
    is_t = runs_df["status"].eq("trunk") | runs_df["train.branch_points"].map(
        lambda p: isinstance(p, (list, tuple)) and len(p) > 0
    )
    if not (is_b.any() or is_t.any()):
        return None
    C = runs_df[f"flops_{convention}"].astype(float).fillna(0.0)
    steps = runs_df["steps"].astype(float)
    own = 1.0 - runs_df["train.branch_step"].astype(float) / steps.where(steps > 0)
    return Savings(
        spent=float((C * own.fillna(0.0)).sum()),
        grid=float(C[~is_t].sum()),
        trunks=int(is_t.sum()),
        branches=int(is_b.sum()),
    )


def savings(runs: Sequence[RunConfig], convention: str = DEFAULT_CONVENTION) -> Savings:
    """The Savings of a study's runs (planned, before training)."""
    runs = dedupe(runs)
    return Savings(
        spent=sum(own_flops(r, convention) for r in runs),
        grid=sum(planned_flops(r, convention) for r in runs if not is_trunk(r)),
        trunks=sum(map(is_trunk, runs)),
        branches=sum(map(is_branch, runs)),
    )
