"""`jaxscale fit`: fit a registered scaling-law form to a runs directory or a CSV."""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from jaxscale.analysis import fit as F
from jaxscale.cli import studyargs

EXIT_CODES = (
    "exit codes: 0 fit OK (and, with --holdout, backtest passed); 1 the sampler's diagnostics "
    "failed, or more held-out truths fell outside their 90% bands than a calibrated band "
    "allows; 2 bad input (one line on stderr naming the problem)"
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale fit SOURCE ...`."""
    p = subparsers.add_parser(
        "fit",
        help="fit a scaling law (NUTS / Laplace / Huber bootstrap) to runs or a CSV, backtest it",
        description="Fit a registered scaling-law form to final losses: Bayesian NUTS with "
        "Student-t residuals on log loss (default), a Laplace approximation, the MAP point, or "
        "the published Huber/L-BFGS bootstrap (Hoffmann et al. 2022 App. D.2; Besiroglu et al. "
        "2024). Rows repeating an (N, D) point are merged into one. Prints the posterior table "
        "(90% intervals) and what the data cannot tell; --holdout fits on the rest and scores "
        "the held-out points against their 90% posterior-predictive bands. With --out writes "
        "summary.json/.csv, samples.npz, posterior.nc, plots and backtest.csv/.json.",
        epilog=EXIT_CODES
        + ". Example: jaxscale fit data/chinchilla_epoch_svg_extracted.csv --drop-highest 5 "
        "--holdout 'C > 1e21'",
    )
    p.add_argument(
        "source",
        help="results directory (finished runs only) or CSV with columns N/D/C/S/loss "
        "(or Epoch's 'Model Size', 'Tokens', 'Training FLOP', 'Loss'; map others with --n-col "
        "etc.); D = C/(6N) when only N and C are given",
    )
    for key, what in (
        ("n", "N (parameters; e.g. non-embedding)"),
        ("d", "D (training tokens)"),
        ("c", "C (training FLOP)"),
        ("s", "S (steps)"),
        ("loss", "the loss"),
    ):
        p.add_argument(
            f"--{key}-col", default=None, metavar="COLUMN", help=f"CSV column holding {what}"
        )
    p.add_argument(
        "--where",
        default=None,
        metavar="EXPR",
        help="keep rows matching a pandas query, e.g. \"dataset == 'c4' and N > 1e7\"",
    )
    p.add_argument(
        "--best-of",
        default=None,
        metavar="COLS",
        help="comma list of columns: keep the lowest-loss row of each group (e.g. N,D: the "
        "best learning rate per model and token count)",
    )
    p.add_argument(
        "--holdout",
        default=None,
        metavar="SPEC",
        help="backtest: fit without, then predict, the top-budget | largest-n | last:K points, "
        "or the rows a pandas query selects (e.g. 'C > 1e21')",
    )
    p.add_argument(
        "--form",
        default="chinchilla",
        help=f"registered form: {', '.join(F.list_forms())} (default chinchilla)",
    )
    p.add_argument(
        "--flops-convention",
        default=None,
        help="which flops_<convention> column is the compute C (needed when several exist)",
    )
    p.add_argument(
        "--target-compute",
        type=float,
        default=None,
        help="report N_opt, D_opt, tokens/param and predicted loss at this C (FLOP, as 6ND; "
        "Chinchilla form), with how far beyond the data it reaches",
    )
    p.add_argument(
        "--method", choices=F.METHODS, default="nuts", help="inference method (default nuts)"
    )
    p.add_argument(
        "--noise",
        choices=F.NOISES,
        default="student_t",
        help="residual distribution on log loss (default student_t, df 4)",
    )
    p.add_argument(
        "--discrepancy",
        choices=("estimate", "default"),
        default="estimate",
        help="model-discrepancy term of predictions beyond the data: estimated from backtests "
        "inside the data (default) or the kit's default (docs/fitting.md)",
    )
    p.add_argument("--out", default=None, help="output directory (default: print only)")
    p.add_argument("--chains", type=int, default=4, help="NUTS chains (default 4)")
    p.add_argument("--warmup", type=int, default=1000, help="NUTS warmup steps per chain")
    p.add_argument("--draws", type=int, default=1000, help="NUTS draws per chain, or Laplace draws")
    p.add_argument(
        "--n-boot", type=int, default=200, help="bootstrap resamples (--method bootstrap)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed for inits, draws, resamples")
    p.add_argument(
        "--drop-highest",
        type=int,
        default=0,
        help="drop the k highest-loss points first (Besiroglu 2024 drops 5)",
    )
    p.add_argument("--no-plots", action="store_true", help="with --out: skip the PNG/SVG plots")
    studyargs.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale fit`; 1 if the fit failed its diagnostics or its backtest."""
    run_ids = (
        studyargs.select(args, args.source).run_ids
        if studyargs.check_directory(args, args.source)
        else None
    )
    cols = {
        k: v
        for k, v in (
            ("N", args.n_col),
            ("D", args.d_col),
            ("C", args.c_col),
            ("S", args.s_col),
            ("loss", args.loss_col),
        )
        if v
    }
    df = F.load_fit_data(
        args.source, flops_convention=args.flops_convention, run_ids=run_ids, columns=cols
    )
    best_of = [c.strip() for c in args.best_of.split(",")] if args.best_of else None
    df, note = F.select_rows(df, where=args.where, best_of=best_of)
    if note:
        print(note)
    if args.drop_highest:
        df = df.sort_values("loss").iloc[: max(0, len(df) - args.drop_highest)]
    kw = dict(
        method=args.method,
        chains=args.chains,
        warmup=args.warmup,
        draws=args.draws,
        seed=args.seed,
        discrepancy=args.discrepancy,
    )
    bt = None
    with warnings.catch_warnings():
        # printed below as caveat / DIAGNOSTICS FAILED lines; once is enough
        for category in (F.PriorDominatedWarning, F.ReplicatesMergedWarning, RuntimeWarning):
            warnings.simplefilter("ignore", category)
        if args.holdout:
            if args.method == "bootstrap":
                kw = {"method": "bootstrap", "n_boot": args.n_boot, "seed": args.seed}
            bt = F.backtest(df, args.holdout, args.form, noise=args.noise, **kw)
            res = bt.fit
        else:
            res = F.fit(df, args.form, noise=args.noise, n_boot=args.n_boot, **kw)
    print(res.describe())
    if res.method != "bootstrap":
        print("predictions: " + res.discrepancy.describe())
    if args.target_compute is not None and res.form == "chinchilla":
        print(F.extrapolation_line(F.extrapolation_summary(res, args.target_compute)))
    if bt is not None:
        print(bt.describe())
    if args.out:
        paths = res.save(args.out, target_compute=args.target_compute, plots=not args.no_plots)
        if bt is not None:
            paths += bt.save(args.out)
        print("wrote " + ", ".join(str(p) for p in paths))
    if not res.ok:
        print("DIAGNOSTICS FAILED: " + "; ".join(res.problems))
        return 1
    if bt is not None and not bt.passed:
        print("BACKTEST FAILED: " + bt.headline())
        return 1
    return 0
