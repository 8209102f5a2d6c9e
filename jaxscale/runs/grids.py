"""Study grids: model and schedule builders, isoFLOP profiles, N×D, batch, LR and λ grids.

Study files (experiments/*.py) build their runs from these; shape grids at fixed N live in
analysis.width_depth, which also analyses them. isoflop_plan, nd_grid_runs, lr_grid_runs and
wd_grid_runs take an `lr_rule` and a `batch_rule` (runs.hparams): each run then gets the rule's
value at its N (non-embedding), D (tokens) and B (tokens/step) and records the rule in
train.lr_rule / train.batch_rule; without a rule every run keeps base.train's value.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jaxscale.config import ConfigError, RunConfig
from jaxscale.core import flops
from jaxscale.runs.hparams import Rule, batch_for, train_overrides

DEFAULT_CONVENTION = "kaplan_attn"


# --- model and schedule builders ------------------------------------------------------------


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


def planned_flops(cfg: RunConfig, convention: str = DEFAULT_CONVENTION) -> float:
    """Training FLOPs C of the full run under `convention` (flops_per_token × tokens)."""
    return flops.flops_per_token(cfg.model, convention) * cfg.total_tokens


def dedupe(runs: Iterable[RunConfig]) -> list[RunConfig]:
    """Runs in order, the first of each run_id kept."""
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


def tagged_budget(name: str) -> float | None:
    """The budget a run name carries (see budget_tag), or None."""
    m = _BUDGET_TAG.search(name)
    return float(m.group(1)) if m else None


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
    lr_rule: Rule | None = None,
    batch_rule: Rule | None = None,
    **model_kw: Any,
) -> list[IsoFlopRun]:
    """Each budget C × each (width, depth): tokens D = C / flops_per_token(N) (Hoffmann 2022 §3.2).

    shapes is one list for every budget, or a {budget: shapes} mapping to centre each profile.
    Steps are round(D / (batch·context)); the rounding error is kept in `rel_error` and must stay
    under max_rel_error. A model needing fewer than min_steps steps is too big for that budget and
    is left out; a budget too small even for the smallest model is an error. lr_rule and
    batch_rule (runs.hparams) set each run's peak LR and batch from its N, D and B; batch_rule
    overrides batch_size.
    """
    if not budgets or not shapes:
        raise ConfigError("isoflop_plan: give at least one budget and one (width, depth) shape")
    bs0 = batch_size or base.train.batch_size
    T = base.model.context_length
    train0 = dataclasses.replace(base.train, batch_size=bs0)
    per_budget = shapes if isinstance(shapes, Mapping) else dict.fromkeys(budgets, shapes)
    out: list[IsoFlopRun] = []
    for C in sorted(budgets):
        if not (isinstance(C, (int, float)) and math.isfinite(C) and C > 0):
            raise ConfigError(f"isoflop_plan: budget {C!r} must be a positive number of FLOPs")
        if C not in per_budget:
            raise ConfigError(f"isoflop_plan: no shapes given for budget {C:.3e}")
        models = sorted(
            (base.model.resized(w, d, **model_kw) for w, d in per_budget[C]),
            key=lambda m: flops.flops_per_token(m, convention),
        )
        fits = 0
        for mc in models:
            fpt = flops.flops_per_token(mc, convention)
            N = mc.n_params_nonembedding
            bs = batch_for(batch_rule, train0, N, C / fpt, T)
            steps = steps_for_tokens(C / fpt, bs, T)
            if C / fpt / (bs * T) < min_steps - 0.5:
                continue
            rules = train_overrides(lr_rule, batch_rule, N, steps * bs * T, bs * T)
            cfg = with_steps(
                dataclasses.replace(base, model=mc), steps, evals=evals, batch_size=bs, **rules
            )
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
            fpt = flops.flops_per_token(small, convention)
            bs = batch_for(batch_rule, train0, small.n_params_nonembedding, C / fpt, T)
            cost = fpt * min_steps * bs * T
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
    return dedupe(r.cfg for r in isoflop_plan(base, budgets, shapes, **kw))


# --- N × D, batch and learning-rate grids ---------------------------------------------------


def nd_grid_runs(
    base: RunConfig,
    shapes: Sequence[tuple[int, int]],
    tokens: Sequence[float],
    *,
    evals: int | None = 8,
    prefix: str = "nd",
    lr_rule: Rule | None = None,
    batch_rule: Rule | None = None,
    **model_kw: Any,
) -> list[RunConfig]:
    """Every (width, depth) × every token count D, to fit L(N, D) jointly (Hoffmann 2022 §3.3);
    lr_rule / batch_rule (runs.hparams) set each run's peak LR and batch from N, D and B."""
    T = base.model.context_length
    out = []
    for w, d in shapes:
        mc = base.model.resized(w, d, **model_kw)
        N = mc.n_params_nonembedding
        for D in tokens:
            bs = batch_for(batch_rule, base.train, N, D, T)
            steps = steps_for_tokens(D, bs, T)
            rules = train_overrides(lr_rule, batch_rule, N, steps * bs * T, bs * T)
            cfg = with_steps(
                dataclasses.replace(base, model=mc), steps, evals=evals, batch_size=bs, **rules
            )
            out.append(
                dataclasses.replace(
                    cfg, name=f"{prefix}_N{mc.n_params_nonembedding}_D{cfg.total_tokens:.2e}"
                )
            )
    return dedupe(out)


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
    return dedupe(out)


def lr_grid_runs(
    base: RunConfig,
    shapes: Sequence[tuple[int, int]],
    lrs: Sequence[float],
    *,
    tokens: float | None = None,
    evals: int | None = 8,
    prefix: str = "lr",
    lr_rule: Rule | None = None,
    batch_rule: Rule | None = None,
    **model_kw: Any,
) -> list[RunConfig]:
    """train.lr × model size, for per-size learning-rate tuning.

    Without lr_rule, `lrs` are the peak LRs of every size. With one, they are factors of the
    rule's LR at each size (a grid centred on the prediction, as Li et al. 2025 search around
    theirs), so a rule whose optimum drifts with N keeps every size's optimum bracketed.
    batch_rule sets each size's batch (tokens are then fixed, steps follow).
    """
    T = base.model.context_length
    out = []
    for w, d in shapes:
        mc = base.model.resized(w, d, **model_kw)
        N = mc.n_params_nonembedding
        D0 = tokens or base.train.steps * base.train.batch_size * T
        bs = batch_for(batch_rule, base.train, N, D0, T)
        steps = steps_for_tokens(tokens, bs, T) if tokens else base.train.steps
        # One description for the whole grid, so its runs still share a vmapped step.
        grid = f"grid ×[{', '.join(f'{f:g}' for f in lrs)}] around " if lr_rule else ""
        rules = train_overrides(lr_rule, batch_rule, N, steps * bs * T, bs * T, grid=grid)
        for f in lrs:
            lr = rules["lr"] * f if lr_rule else f
            cfg = with_steps(
                dataclasses.replace(base, model=mc),
                steps,
                evals=evals,
                batch_size=bs,
                **(rules | {"lr": lr}),
            )
            out.append(dataclasses.replace(cfg, name=f"{prefix}_N{N}_lr{lr:.2e}"))
    return dedupe(out)


def wd_grid_runs(
    base: RunConfig,
    shapes: Sequence[tuple[int, int]],
    tokens: Sequence[float],
    *,
    wds: Sequence[float] | None = None,
    taus: Sequence[float] | None = None,
    evals: int | None = 8,
    prefix: str = "wd",
    lr_rule: Rule | None = None,
    batch_rule: Rule | None = None,
    **model_kw: Any,
) -> list[RunConfig]:
    """Every (width, depth) × token count D × weight decay, for the optimal AdamW timescale.

    Give either `wds`, the λ of every run, or `taus`, AdamW timescales τ = B/(ηλD) (Wang &
    Aitchison 2024; Bergsma et al. 2025): each run then gets λ = B/(η τ D) at its own η, B and
    D, so a grid in τ stays centred as η and D/N change. λ = 0 in `wds` is the no-decay
    baseline. lr_rule / batch_rule set η and B from N, D and B as in nd_grid_runs.
    """
    if (wds is None) == (taus is None):
        raise ConfigError("wd_grid_runs: give exactly one of wds (λ values) or taus (τ values)")
    values = list(wds if wds is not None else taus)  # type: ignore[arg-type]
    if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        what = "wds" if wds is not None else "taus"
        raise ConfigError(f"wd_grid_runs: need finite {what}, got {values}")
    if wds is not None and min(values) < 0:
        raise ConfigError(f"wd_grid_runs: weight decays must be >= 0, got {values}")
    if taus is not None and min(values) <= 0:
        raise ConfigError(f"wd_grid_runs: timescales τ must be > 0, got {values}")
    cells = nd_grid_runs(
        base,
        shapes,
        tokens,
        evals=evals,
        prefix=prefix,
        lr_rule=lr_rule,
        batch_rule=batch_rule,
        **model_kw,
    )
    out = []
    for cfg in cells:
        for v in values:
            # λ = B/(η τ D): B/D = 1/steps, so λ = 1/(η τ steps) whatever the token units.
            wd = v if wds is not None else 1.0 / (cfg.train.lr * v * cfg.train.steps)
            tc = dataclasses.replace(cfg.train, weight_decay=wd)
            out.append(dataclasses.replace(cfg, train=tc, name=f"{cfg.name}_wd{wd:.3g}"))
    return dedupe(out)
