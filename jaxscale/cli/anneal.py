"""`jaxscale anneal`: fit the LR-annealing loss law to runs' curves, predict other schedules."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jaxscale.analysis import annealing as an
from jaxscale.cli import studyargs
from jaxscale.config.schema import SCHEDULES
from jaxscale.runs.rundir import RunDir


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale anneal RESULTS --fit-runs RUN... [--predict-schedule S --steps N]`."""
    p = subparsers.add_parser(
        "anneal",
        help="fit L = L0 + A*S1^-alpha - C*S2 (Tissue et al. 2024) to loss curves; predict "
        "the loss under schedules not run",
        description="Fits the LR-annealing law (Tissue et al. 2024, arXiv 2408.11029, eq. 1) to "
        "the post-warmup curve points of --fit-runs (S1 = area under the LR schedule, S2 = "
        "annealing area with momentum lambda, averaged over a grid of lambda) with the Bayesian "
        "fitter (NUTS, 90% intervals; the likelihood counts the points as the independent ones "
        "they are worth, given their residuals' autocorrelation); "
        "several sizes are fitted jointly with L0(N) = E + B N^-beta. Predicts the loss "
        "trajectory of --compare-runs (checked against what they measured) and of a schedule "
        "not run (--predict-schedule, built from the first fit run's config), flagging "
        "predictions whose S1 lies beyond the fitted range. Writes anneal.json, "
        "predictions.csv and anneal.png/svg.",
    )
    p.add_argument("results", help="results directory (or one run directory)")
    p.add_argument(
        "--fit-runs",
        nargs="+",
        required=True,
        metavar="RUN",
        help="runs to fit (run ID, name, or unique run-ID prefix); they must anneal the LR",
    )
    p.add_argument(
        "--compare-runs",
        nargs="*",
        default=[],
        metavar="RUN",
        help="held-out runs: predicted from their logged LR and checked against their curves",
    )
    p.add_argument(
        "--predict-schedule",
        choices=SCHEDULES,
        default=None,
        help="a schedule to predict, with the first fit run's other train settings",
    )
    p.add_argument("--steps", type=int, default=None, help="length of the predicted schedule")
    p.add_argument(
        "--target",
        choices=an.TARGETS,
        default="loss",
        help="curve fitted: train loss every step (default) or eval_loss at eval steps",
    )
    p.add_argument(
        "--lambda",
        dest="lam",
        default="auto",
        help="annealing-momentum decay factor, or 'auto' (default): fits under each of "
        f"{list(an.LAMBDA_GRID)} and averages the predictions with each value's posterior "
        f"weight (one curve rarely fixes lambda); the paper uses {an.LAMBDA}",
    )
    p.add_argument(
        "--points", type=int, default=an.POINTS, help="curve points kept per run (thinned)"
    )
    p.add_argument(
        "--method",
        default="nuts",
        choices=("nuts", "laplace"),
        help="posterior: NUTS (default) or the faster Laplace approximation",
    )
    p.add_argument("--draws", type=int, default=1000, help="NUTS warmup and draws per chain")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument(
        "--out", default=None, help="output directory (default <results>/analyses/anneal)"
    )
    studyargs.add_arguments(p)
    return p


def _lam(v: str) -> float | str:
    if v == "auto":
        return v
    try:
        return float(v)
    except ValueError:
        raise ValueError(f"--lambda: 'auto' or a number in [0, 1), got {v!r}") from None


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale anneal`; exit 1 when the fit's diagnostics failed."""
    if args.points < 5:
        raise ValueError(f"--points must be >= 5, got {args.points}")
    if args.steps is not None and args.predict_schedule is None:
        raise ValueError("--steps goes with --predict-schedule")
    runs_df, curves_df = studyargs.load(args, args.results)
    fit_ids = an.resolve_runs(runs_df, args.fit_runs)
    cmp_ids = an.resolve_runs(runs_df, args.compare_runs)
    fit = an.fit_runs(
        runs_df,
        curves_df,
        fit_ids,
        target=args.target,
        points=args.points,
        lam=_lam(args.lam),
        method=args.method,
        warmup=args.draws,
        draws=args.draws,
        seed=args.seed,
        quiet=True,
    )
    print(fit.describe())
    preds, curves, checks = {}, {}, {}
    size = dict(zip(runs_df["run_id"], runs_df["n_params_nonembedding"].astype(float)))
    for rid in fit_ids:
        lr = an.run_lr(curves_df[curves_df["run_id"] == rid], rid)
        pr = an.predict_lr(fit, lr, N=size[rid], seed=args.seed)
        obs = fit.points[fit.points["run_id"] == rid]
        preds[f"fit {rid[:8]}"] = pr
        curves[f"{rid[:8]}"] = (pr, obs, "fit")
    for rid in cmp_ids:
        lr = an.run_lr(curves_df[curves_df["run_id"] == rid], rid)
        obs = an.curve_points(
            runs_df, curves_df, [rid], target=args.target, points=None, lam=fit.lam
        )[["step", "loss"]]
        pr = an.predict_lr(fit, lr, N=size[rid], steps=obs["step"].to_numpy(), seed=args.seed)
        ck = an.check_against(fit, pr, obs)
        checks[rid] = ck
        preds[f"compare {rid[:8]}"] = pr
        curves[f"{rid[:8]} held out"] = (pr, obs, "predicted")
        print(an.prediction_line(fit, pr.iloc[-1], f"held-out run {rid[:8]}"))
        print(
            f"  observed {ck['final_observed']:.4f} at step {ck['final_step']}: "
            f"{'inside' if ck['final_inside'] else 'OUTSIDE'} the 90% interval; "
            f"{ck['coverage_90']:.0%} of its {ck['points']} post-warmup points inside their "
            "90% bands (90% expected if the law and its noise model hold)"
        )
    if args.predict_schedule:
        base = RunDir(runs_df.set_index("run_id").loc[fit_ids[0], "path"]).read_config()
        tc = an.schedule_config(base.train, args.predict_schedule, args.steps)
        pr = an.predict_lr(fit, an.schedule_lr(tc), N=size[fit_ids[0]], seed=args.seed)
        label = f"{tc.schedule} {tc.steps} steps, peak LR {tc.lr:g}"
        preds[label] = pr
        curves[label] = (pr, None, "predicted")
        print(an.prediction_line(fit, pr.iloc[-1], f"schedule {label}"))
    out = Path(args.out) if args.out else Path(args.results) / "analyses" / "anneal"
    written = an.save(fit, out, preds, {"held_out": checks})
    written += an.plot(fit, curves, out / "anneal")
    print(f"wrote {', '.join(p.name for p in written)} to {out}")
    return 0 if fit.ok else 1
