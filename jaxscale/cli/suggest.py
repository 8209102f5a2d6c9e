"""`jaxscale suggest`: the next runs to train, chosen to shrink a target's uncertainty per FLOP."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxscale.analysis import design as Dz
from jaxscale.analysis import fit as F
from jaxscale.analysis import plotting
from jaxscale.analysis.fit import extrapolation as X
from jaxscale.analysis.fit import inference
from jaxscale.analysis.fit.inference import canonical
from jaxscale.cli import studyargs
from jaxscale.config import RunConfig
from jaxscale.runs import selection, store
from jaxscale.runs.grids import DEFAULT_CONVENTION, nd_grid_runs
from jaxscale.runs.hparams import Rule
from jaxscale.runs.rundir import run_dirs
from jaxscale.runs.runner import run_sweep
from jaxscale.runs.study import Study, load_study

EXIT_CODES = (
    "exit codes: 0 suggestions printed; 1 none fits the constraints, or the fit failed its "
    "diagnostics (suggestions still printed, marked); 2 bad input"
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale suggest SOURCE --target ...`."""
    p = subparsers.add_parser(
        "suggest",
        help="propose the next k runs that shrink a target's posterior uncertainty most per FLOP",
        description="Fit the Chinchilla form to the runs so far, then rank candidate (N, D) runs "
        "by the expected reduction of the target's posterior variance per FLOP (6ND), by "
        "preposterior importance reweighting of the posterior draws (Chaloner & Verdinelli "
        "1995). k > 1 is a greedy batch, each pick conditioned on the earlier picks' simulated "
        "outcomes. With --study the candidates are the study's model shapes and each run gets "
        "the study's LR rule (LR_RULE). docs/design.md explains the method and its limits.",
        epilog=EXIT_CODES
        + ". Example: jaxscale suggest data/chinchilla_epoch_svg_extracted.csv --target "
        "N_opt@1e22 --k 3 --budget 3e21 --max-n 2e10 --method laplace",
    )
    p.add_argument("source", help="results directory of runs, or a CSV with N, D (or C), loss")
    p.add_argument(
        "--target",
        required=True,
        help="N_opt@C | D_opt@C (compute-optimal allocation at C FLOPs, 6ND), loss@C (loss at "
        "that optimum) or loss@N=...,D=... (loss of one run)",
    )
    p.add_argument("--k", type=int, default=1, help="runs to propose (default 1)")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="total FLOPs (6ND) the k runs may cost (default: the FLOPs of the runs so far)",
    )
    p.add_argument(
        "--max-n",
        type=float,
        default=None,
        help="largest model N allowed (memory; default 4x the largest N so far)",
    )
    p.add_argument(
        "--method",
        choices=("nuts", "laplace", "laplace-is", "bootstrap"),
        default="nuts",
        help="posterior behind the design: nuts (default; exact up to MCMC error), laplace "
        "(seconds; Gaussian, wrong with few points), laplace-is (Laplace resampled to the "
        "posterior by importance sampling; seconds; checked by Pareto k), bootstrap "
        "(Huber/L-BFGS)",
    )
    p.add_argument("--draws", type=int, default=500, help="draws per chain (laplace: in total)")
    p.add_argument("--warmup", type=int, default=500, help="NUTS warmup per chain")
    p.add_argument("--sims", type=int, default=Dz.N_SIM, help="simulated outcomes per candidate")
    p.add_argument("--grid", type=int, default=21, help="candidate grid points per axis")
    p.add_argument(
        "--per",
        choices=("flop", "log"),
        default="flop",
        help="rank by variance reduction per FLOP (default), or by the fall of log variance "
        "per e-fold of total compute (log: does not shun large runs)",
    )
    p.add_argument(
        "--horizon",
        type=float,
        default=None,
        help="plan for this many FLOPs (6ND): the picks open the better of two greedy batches "
        "filling it, by gain per cost and by gain alone (default: rank one run at a time)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fit and the simulations")
    p.add_argument("--out", default=None, help="write the suggestions as CSV here")
    studyargs.add_arguments(p)
    return p


@dataclass
class Plan:
    """Suggestions with their run configs (study mode) and the posterior behind them."""

    fit: F.FitResult
    target: Dz.Target
    suggestions: list[Dz.Suggestion]
    configs: list[RunConfig | None]
    header: list[str]


def study_rule(study: Study) -> Rule | None:
    """The study file's LR_RULE (runs.hparams), if it defines one."""
    mod = sys.modules.get(f"jaxscale_study_{study.path.stem}")
    rule = getattr(mod, "LR_RULE", None)
    return rule if isinstance(rule, Rule) else None


def study_candidates(
    runs: Sequence[RunConfig],
    *,
    max_n: float,
    max_flops: float,
    n_grid: int,
    prefix: str,
    lr_rule: Rule | None,
) -> list[RunConfig]:
    """Runs at the study's own model shapes (N <= max_n) and a log grid of token counts, each
    with the study's LR rule and batch, costing at most max_flops (6ND)."""
    by_shape: dict[tuple, RunConfig] = {}
    for r in runs:
        by_shape.setdefault((r.model.d_model, r.model.n_layers, r.model.head_dim), r)
    d_lo = min(r.total_tokens for r in runs)
    out: list[RunConfig] = []
    for (w, d, hd), base in by_shape.items():
        N = base.model.n_params_nonembedding
        if N > max_n or 6 * N * d_lo > max_flops:
            continue
        tokens = np.geomspace(d_lo, max(d_lo, max_flops / (6 * N)), n_grid)
        for c in nd_grid_runs(base, [(w, d)], tokens, head_dim=hd, prefix=prefix, lr_rule=lr_rule):
            if 6 * N * c.total_tokens <= max_flops * (1 + 1e-9):
                out.append(c)
    return out


def make_plan(
    df: pd.DataFrame,
    target: Dz.Target,
    *,
    k: int,
    budget: float | None,
    max_n: float | None,
    method: str = "nuts",
    draws: int = 500,
    warmup: int = 500,
    sims: int = Dz.N_SIM,
    n_grid: int = 21,
    seed: int = 0,
    study_runs: Sequence[RunConfig] | None = None,
    lr_rule: Rule | None = None,
    prefix: str = "next",
    exclude: Sequence[str] = (),
    allow_empty: bool = False,
    per: str = "flop",
    horizon: float | None = None,
) -> Plan:
    """Fit, build candidates, and choose k runs (see analysis.design.suggest)."""
    N0, D0 = np.asarray(df["N"], float), np.asarray(df["D"], float)
    spent = float(np.sum(6 * N0 * D0))
    budget = spent if budget is None else float(budget)
    max_n = 4 * float(N0.max()) if max_n is None else float(max_n)
    kw: dict[str, Any] = dict(method=method, seed=seed, quiet=True)
    if method == "nuts":
        kw |= dict(chains=4, warmup=warmup, draws=draws)
    elif method == "laplace":
        kw |= dict(draws=draws * 4)
    with warnings.catch_warnings():
        for cat in (F.PriorDominatedWarning, F.ReplicatesMergedWarning, RuntimeWarning):
            warnings.simplefilter("ignore", cat)
        if method == "laplace-is":
            res = Dz.laplace_is(inference.setup(df, "chinchilla"), draws=draws * 4, seed=seed)
        else:
            res = F.fit(df, "chinchilla", **kw)
    if study_runs is not None:
        cands = study_candidates(
            study_runs,
            max_n=max_n,
            max_flops=budget,
            n_grid=n_grid,
            prefix=prefix,
            lr_rule=lr_rule,
        )
        cands = [c for c in cands if c.run_id() not in set(exclude)]
        N_C = np.array([c.model.n_params_nonembedding for c in cands], float)
        D_C = np.array([c.total_tokens for c in cands], float)
        where = f"{len(cands)} at the study's model shapes x a {n_grid}-point token grid"
    else:
        N_C, D_C = Dz.candidate_grid(N0, D0, max_n=max_n, max_flops=budget, n_grid=n_grid)
        cands = []
        where = f"{N_C.size} on a {n_grid}x{n_grid} log grid of (N, D)"
    if not N_C.size and not allow_empty:
        raise ValueError(
            f"no candidate run fits max_n={max_n:.3g} and budget {budget:.3g} FLOPs (6ND)"
        )
    sugg = (
        Dz.suggest(
            res,
            target,
            N_C,
            D_C,
            k=k,
            budget=budget,
            n_sim=sims,
            seed=seed,
            per=per,
            spent=spent,
            horizon=horizon,
        )
        if N_C.size
        else []
    )
    configs: list[RunConfig | None] = [None] * len(sugg)
    for j, s in enumerate(sugg):
        if not cands:
            continue
        c = cands[int(np.flatnonzero((N_C == s.N) & (D_C == s.D))[0])]
        v = lr_rule.at(s.N, s.D, float(c.tokens_per_step)) if lr_rule else None
        lr = f"{c.train.lr:.3g}" + (f" (rule: {v})" if v else " (the study's fixed LR)")
        sugg[j] = dataclasses.replace(s, extra={"lr": lr, "run": c.name})
        configs[j] = c
    ti = Dz.target_interval(res, target)
    reach = ""
    if target.kind != "loss":
        opt = {"N": [ti["q50"]] if target.kind == "N_opt" else [math.sqrt(target.C / 6)]}
        opt["D"] = [target.C / (6 * opt["N"][0])]
        reach = f"; C* lies {float(X.distance(res.inputs, opt)[0]):.2g} decades beyond the data"
    rank = "per FLOP" if per == "flop" else "(log) per e-fold of total FLOPs"
    if horizon is not None:
        rank += f", planned for {horizon:.3g} FLOPs (the better of that and gain alone)"
    header = [
        f"target: {target.describe()} (FLOPs {Dz.CONVENTION}): now {ti['q50']:.4g} "
        f"[{ti['q5']:.4g}, {ti['q95']:.4g}] ({Dz.LEVEL:.0%} interval, ratio {ti['ratio']:.3g})"
        f"{reach}",
        f"posterior: {res.form} fit [{res.method}] on {res.loss.size} points, "
        f"{min(res.flat(res.params[0]).size, 2000)} draws used"
        + ("" if res.method == "nuts" else f" ({res.method}: fast, intervals approximate)")
        + (
            f"; importance sampling: Pareto k {res.diagnostics['is']['k_hat']:.2f}, ESS "
            f"{res.diagnostics['is']['ess']:.0f}/{res.diagnostics['is']['n']}"
            if "is" in res.diagnostics
            else ""
        ),
        f"candidates: {where}; N <= {max_n:.3g}, total <= {budget:.3g} FLOPs (budget; runs so far "
        f"cost {spent:.3g}); ranked by expected reduction of Var[log target] {rank}; k={k} "
        "greedy, each pick conditioned on the earlier picks' simulated outcomes",
        *(f"DIAGNOSTICS FAILED: {p}" for p in res.problems),
    ]
    return Plan(res, target, sugg, configs, header)


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale suggest`."""
    target = Dz.parse_target(args.target)
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    is_dir = studyargs.check_directory(args, args.source)
    run_ids = studyargs.select(args, args.source).run_ids if is_dir else None
    # the design costs runs as 6ND, so which FLOP column becomes C does not matter: pick one
    conv = DEFAULT_CONVENTION if is_dir else None
    df = F.load_fit_data(args.source, run_ids=run_ids, flops_convention=conv)
    df = canonical(df)
    study_runs, rule = None, None
    if args.study:
        study = load_study(args.study)
        study_runs, rule = study.runs(args.setting), study_rule(study)
    plan = make_plan(
        df,
        target,
        k=args.k,
        budget=args.budget,
        max_n=args.max_n,
        method=args.method,
        draws=args.draws,
        warmup=args.warmup,
        sims=args.sims,
        n_grid=args.grid,
        seed=args.seed,
        per=args.per,
        horizon=args.horizon,
        study_runs=study_runs,
        lr_rule=rule,
        exclude=[r.name for r in run_dirs(args.source)] if is_dir else (),
    )
    for line in plan.header:
        print(line)
    for s in plan.suggestions:
        print(s.line())
    if plan.suggestions:
        last = plan.suggestions[-1]
        tot = sum(s.flops for s in plan.suggestions)
        print(
            f"all {len(plan.suggestions)}: {tot:.3g} FLOPs (6ND); expected {Dz.LEVEL:.0%} interval "
            f"of the target x/÷{math.exp(plan.suggestions[0].width_before / 2):.3g} -> "
            f"x/÷{math.exp(last.width_after / 2):.3g} (half-width as a factor, log scale)"
        )
    if args.out:
        rows = [
            {**dataclasses.asdict(s), **dict(s.extra), "reduction": s.reduction}
            for s in plan.suggestions
        ]
        for r in rows:
            r.pop("extra", None)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    if not plan.suggestions:
        print("no candidate fits the constraints")
        return 1
    return 0 if plan.fit.ok else 1


# --------------------------------------------------------------------------------------------
# `jaxscale study --adaptive`: train -> refit -> suggest until the target is known well enough
# --------------------------------------------------------------------------------------------

ADAPTIVE_DIR = "adaptive"  # <results>/adaptive/: plan.json (added runs), path.csv, path.png


def _load_plan(path: Path) -> dict[str, Any]:
    rec = store.read_json(path)
    return rec if isinstance(rec, dict) and isinstance(rec.get("added"), list) else {"added": []}


def adaptive_study(
    study: Study,
    setting: str,
    results: str | Path,
    *,
    target: str,
    threshold: float,
    budget: float,
    k: int = 1,
    max_n: float | None = None,
    method: str = "laplace-is",
    convention: str = "kaplan_attn",
    max_rounds: int = 20,
    progress: bool = False,
    train_fn: Any = None,
    seed: int = 0,
) -> int:
    """Sweep the study's runs, then repeat: fit, stop if the target's 90% interval ratio
    (q95/q5) is at most `threshold` or the added runs' 6ND reached `budget`, else add the k
    suggested runs (study shapes, study LR rule; planned for the budget left, see
    design.suggest's horizon) and sweep again. The added runs are recorded in
    <results>/adaptive/plan.json before they are trained, so a rerun trains nothing finished
    and continues where it stopped. Exit code: 0 threshold reached, 1 budget or rounds spent
    (or a run failed), 3 preempted (rerun to continue)."""

    tg = Dz.parse_target(target)
    if not (threshold > 1):
        raise ValueError(f"--threshold is a q95/q5 ratio and must exceed 1, got {threshold}")
    out = Path(results) / ADAPTIVE_DIR
    out.mkdir(parents=True, exist_ok=True)
    plan_path = out / "plan.json"
    rec = _load_plan(plan_path)
    if rec.get("target", target) != target:
        raise ValueError(
            f"{plan_path} was made for target {rec['target']!r}, not {target!r}; pass another "
            "--results or the same --adaptive target"
        )
    base = study.runs(setting)
    rule = study_rule(study)
    added = [RunConfig.from_dict(d) for d in rec["added"]]
    rows: list[dict[str, Any]] = []
    status, code = "rounds spent", 1
    for rnd in range(max_rounds + 1):
        runs = [*base, *added]
        selection.write_record(results, study, setting, runs)
        rep = run_sweep(
            runs,
            results,
            progress=progress,
            convention=convention,
            retry_failed=True,
            train_fn=train_fn,
        )
        if rep.preempted:
            print("preempted: run the same command again to continue")
            return rep.exit_code
        ids = {r.run_id() for r in runs}
        df = canonical(F.load_fit_data(results, flops_convention=convention, run_ids=ids))
        spent = float(np.sum(6 * df["N"] * df["D"]))
        spent_added = float(sum(6 * c.model.n_params_nonembedding * c.total_tokens for c in added))
        left = budget - spent_added
        plan = make_plan(
            df,
            tg,
            k=k,
            budget=max(left, 0.0),
            max_n=max_n,
            method=method,
            study_runs=base,
            lr_rule=rule,
            prefix=f"{study.name}_adaptive",
            exclude=sorted(ids),
            seed=seed,
            allow_empty=True,
            # plan for the budget still to spend (doubling the FLOPs so far when unbounded)
            horizon=left if math.isfinite(left) and left > 0 else spent,
        )
        ti = Dz.target_interval(plan.fit, tg)
        imp = plan.fit.diagnostics.get("is", {})
        rows.append(
            {
                "round": rnd,
                "runs": len(df),
                "flops_6ND": spent,
                "added_flops_6ND": spent_added,
                **{k2: ti[k2] for k2 in ("q5", "q50", "q95", "ratio")},
                "method": plan.fit.method,
                "pareto_k": imp.get("k_hat", math.nan),
            }
        )
        print(
            f"adaptive round {rnd}: {len(df)} runs, {spent:.3g} FLOPs (6ND); {tg.describe()} "
            f"{ti['q50']:.4g} [{ti['q5']:.4g}, {ti['q95']:.4g}] ({Dz.LEVEL:.0%}, ratio "
            f"{ti['ratio']:.3g}; threshold {threshold:g}; posterior {plan.fit.method}"
            + (f", Pareto k {imp['k_hat']:.2f}" if imp else "")
            + ")"
            + "".join(f"\n  DIAGNOSTICS FAILED: {p}" for p in plan.fit.problems)
        )
        if ti["ratio"] <= threshold:
            status, code = "threshold reached", 0
            break
        if left <= 0 or not plan.suggestions or rnd == max_rounds:
            status = "budget spent" if rnd < max_rounds else "rounds spent"
            break
        for s in plan.suggestions:
            print("  " + s.line())
        added += [c for c in plan.configs if c is not None]
        store.write_json_atomic(
            plan_path,
            {
                "target": target,
                "threshold": threshold,
                "budget": budget,
                "added": [c.to_dict() for c in added],
            },
        )
    path = pd.DataFrame(rows)
    if (out / "path.csv").exists():  # a rerun continues the path instead of restarting it
        path = pd.concat([pd.read_csv(out / "path.csv"), path], ignore_index=True)
        path = path.drop_duplicates("runs", keep="last").sort_values("runs")
        path["round"] = np.arange(len(path))
    path.to_csv(out / "path.csv", index=False)
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(path["flops_6ND"], path["ratio"], "o-")
    ax.axhline(threshold, color="0.5", ls=":", lw=0.8, label=f"threshold {threshold:g}")
    plotting.log_axes(ax, y=False)
    ax.set_xlabel("FLOPs spent (6ND, all runs)")
    ax.set_ylabel(f"{Dz.LEVEL:.0%} interval ratio q95/q5")
    ax.set_title(f"adaptive study: {tg.describe()}", fontsize=9)
    ax.legend()
    plotting.save_figure(fig, out / "path")
    print(f"adaptive: {status} after {len(added)} added runs; path: {out / 'path.csv'}")
    return code or rep.exit_code
