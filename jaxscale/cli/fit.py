"""`jaxscale fit`: fit a registered scaling-law form to a runs directory or a CSV."""

from __future__ import annotations

import argparse
from typing import Any

from jaxscale.analysis import fit as F
from jaxscale.cli import studyargs


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale fit SOURCE ...`."""
    p = subparsers.add_parser(
        "fit",
        help="fit a scaling law (NUTS / Laplace / Huber bootstrap) to runs or a CSV",
        description="Fit a registered scaling-law form to final losses: Bayesian NUTS with "
        "Student-t residuals on log loss (default), a Laplace approximation, the MAP point, or "
        "the published Huber/L-BFGS bootstrap (Hoffmann et al. 2022 App. D.2; Besiroglu et al. "
        "2024). Prints the posterior table; with --out writes summary.json/.csv, samples.npz, "
        "posterior.nc and plots. Exit code 1 when the sampler's diagnostics fail.",
    )
    p.add_argument(
        "source",
        help="results directory (finished runs only) or CSV with columns N/D/C/S/loss "
        "(or Epoch's 'Model Size', 'Tokens', 'Training FLOP', 'Loss')",
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
        help="report N_opt, D_opt, tokens/param at this C (FLOP; Chinchilla form)",
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
    """Run `jaxscale fit`; 1 if the fit failed its diagnostics."""
    run_ids = (
        studyargs.select(args, args.source).run_ids
        if studyargs.check_directory(args, args.source)
        else None
    )
    df = F.load_fit_data(args.source, flops_convention=args.flops_convention, run_ids=run_ids)
    if args.drop_highest:
        df = df.sort_values("loss").iloc[: max(0, len(df) - args.drop_highest)]
    res = F.fit(
        df,
        args.form,
        method=args.method,
        noise=args.noise,
        chains=args.chains,
        warmup=args.warmup,
        draws=args.draws,
        seed=args.seed,
        n_boot=args.n_boot,
    )
    print(res.describe())
    if args.target_compute is not None and res.form == "chinchilla":
        for k, v in F.optimal_summary(res, args.target_compute).items():
            print(f"{k:>16} median {v['q50']:.4g}  90% [{v['q5']:.4g}, {v['q95']:.4g}]")
    if args.out:
        paths = res.save(args.out, target_compute=args.target_compute, plots=not args.no_plots)
        print("wrote " + ", ".join(str(p) for p in paths))
    if not res.ok:
        print("DIAGNOSTICS FAILED: " + "; ".join(res.problems))
        return 1
    return 0
