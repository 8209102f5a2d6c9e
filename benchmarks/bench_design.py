"""Benchmark: sequential design replay — which runs of a finished pool a policy would have trained.

A pool of finished runs (the digitised Chinchilla points, planted Chinchilla surfaces with
realistic noise, a misspecified Kaplan surface) is replayed: starting from its cheapest runs, a
policy adds pool runs one at a time; after each, the Chinchilla form is refitted and the
extrapolated target is scored against the held-out top budget. Policies: `design`
(analysis.design: expected variance reduction of the target per FLOP), `random` (mean of 5
orders), `cheapest` first, and a fixed `grid` (per half-decade of C, the smallest, middle and
largest model, then the rest cheapest-first).

The posterior at every step is the kit's Laplace fit (fit_problem(..., method="laplace"),
Gaussian at the mode, ~0.5 s), or with --posterior laplace-is the importance-corrected one
(design.laplace_is): NUTS per step would take minutes per replay. Design policies (DESIGNS)
rank one run at a time per FLOP or per e-fold of compute, or plan for a budget (horizon).

    python -m benchmarks design            # the table in BENCHMARKS.md
    python -m benchmarks design --quick    # one pool, fewer fractions
    python -m benchmarks design --pool planted --design design --posterior laplace-is
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/bench_design.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.common import DATA_DIR  # noqa: E402

FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
NOISE = 0.005  # sd of log loss: the Chinchilla points' own residual scale (Laplace fit, 245 pts)
HOFFMANN = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann 2022 eq. 10
BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20, 3e20, 1e21)
DRAWS = 1000
# design policies: (label, ranking of suggest(per=...), planning horizon of design_order)
DESIGNS = (
    ("design", "flop", None),
    ("design-log", "log", None),
    ("design-plan", "flop", "budget"),
    ("design-plan2", "flop", "double"),
)


@dataclass
class Pool:
    """Runs a policy may pick (N, D, loss), the seed it starts from, the held-out truth."""

    name: str
    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    seed: np.ndarray  # bool mask of runs every policy starts with
    held_N: np.ndarray
    held_D: np.ndarray
    held_loss: np.ndarray  # what the held-out runs should score against: the planted law
    C_top: float  # compute of the held-out budget (6ND)
    n_opt_true: float  # N_opt at C_top of the planted law (NaN: unknown)
    note: str
    noiseless: bool = False  # held_loss is the planted law itself (scored against curve bands)

    @property
    def cost(self) -> np.ndarray:
        return 6 * self.N * self.D


def _hoffmann(N, D):
    h = HOFFMANN
    return h["E"] + h["A"] / np.asarray(N) ** h["alpha"] + h["B"] / np.asarray(D) ** h["beta"]


def _isoflop_pool(name: str, law, note: str, seed: int = 0, sizes: int = 7) -> Pool:
    """Hoffmann approach-2 design (sizes around sqrt(C/120), 6x either side) on BUDGETS;
    the top budget held out; lognormal noise NOISE; seed: the lowest budget's runs."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in BUDGETS:
        for n in math.sqrt(c / 120) * np.geomspace(1 / 6, 6, sizes):
            d = c / (6 * n)
            rows.append((n, d, c, float(law(n, d)) * math.exp(NOISE * rng.standard_normal())))
    N, D, C, L = (np.array(v) for v in zip(*rows))
    top = C == C.max()
    Ng = np.geomspace(C.max() / 6 / 1e12, 1e12, 20001)  # dense isoFLOP line for the true N_opt
    n_opt = float(Ng[np.argmin(law(Ng, C.max() / (6 * Ng)))])
    pool = ~top
    return Pool(
        name,
        N[pool],
        D[pool],
        L[pool],
        C[pool] == C.min(),
        N[top],
        D[top],
        law(N[top], D[top]),  # noise-free: the error is the extrapolation's, not the noise's
        float(C.max()),
        n_opt,
        note,
        noiseless=True,
    )


def pools() -> list[Pool]:
    """The replay pools: Chinchilla points, planted Chinchilla, misspecified Kaplan."""
    from jaxscale.analysis.fit.inference import canonical, prepare
    from jaxscale.analysis.synthetic import misspecified_law

    df = canonical(pd.read_csv(DATA_DIR / "chinchilla_epoch_svg_extracted.csv"))
    df = df[df["loss"] < sorted(df["loss"])[-5]]  # Besiroglu 2024 drops the 5 highest losses
    prep = prepare(df, "chinchilla")
    N, D, L = prep.x["N"], prep.x["D"], prep.y
    C = 6 * N * D
    held = C >= 1e21
    cheap = np.argsort(C[~held])[:20]
    seed = np.zeros((~held).sum(), bool)
    seed[cheap] = True
    chin = Pool(
        "chinchilla",
        N[~held],
        D[~held],
        L[~held],
        seed,
        N[held],
        D[held],
        L[held],
        float(np.median(C[held])),
        math.nan,
        f"{(~held).sum()} digitised Hoffmann 2022 points, 6ND < 1e21; held out {held.sum()} "
        "with 6ND >= 1e21; seed: the 20 cheapest",
    )
    return [
        chin,
        _isoflop_pool(
            "planted", _hoffmann, "Hoffmann 2022 law, 6 budgets 1e18-3e20 x 7 sizes, noise 0.005"
        ),
        _isoflop_pool(
            "kaplan",
            lambda n, d: misspecified_law("kaplan", n, d),
            "Kaplan 2020 eq. 1.5 (misspecified for the fit), same design",
        ),
    ]


# --------------------------------------------------------------------------------------------


class Scorer:
    """Laplace fits of subsets of one pool (compiled once) and their errors on the held-out."""

    def __init__(self, pool: Pool, posterior: str = "laplace"):
        from jaxscale.analysis import design as Dz
        from jaxscale.analysis.fit import inference as I

        self.pool, self.Dz, self.I, self.posterior = pool, Dz, I, posterior
        self.prob = I.setup({"N": pool.N, "D": pool.D, "loss": pool.loss}, "chinchilla")
        # prepare() may merge repeated points; keep the pool's own order (none repeat here)
        if self.prob.size != pool.N.size:
            raise ValueError(f"{pool.name}: pool has repeated (N, D) points")
        self.t_loss = Dz.Target("loss", N=tuple(pool.held_N), D=tuple(pool.held_D))
        self.t_nopt = Dz.Target("N_opt", C=pool.C_top)

    def fit(self, keep: np.ndarray):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.posterior == "laplace-is":
                return self.Dz.laplace_is(self.prob, keep, draws=DRAWS)
            return self.I.fit_problem(self.prob, keep, method="laplace", draws=DRAWS, quiet=True)

    def score(self, res) -> dict[str, float]:
        """Held-out loss error (RMS of log pred/obs), its 90% coverage; N_opt error, covered."""
        from jaxscale.analysis.fit.results import mean_log_loss, predict

        p = self.pool
        mu = mean_log_loss(res.form, res.samples, {"N": p.held_N, "D": p.held_D})
        med = np.median(mu.reshape(-1, p.held_N.size), 0)
        err = float(np.sqrt(np.mean((med - np.log(p.held_loss)) ** 2)))
        band = predict(res, {"N": p.held_N, "D": p.held_D}, noise=not p.noiseless)
        cov = float(np.mean((band["q5"] <= p.held_loss) & (p.held_loss <= band["q95"])))
        out = {"loss_err": err, "loss_cov": cov, "nopt_err": math.nan, "nopt_cov": math.nan}
        if math.isfinite(p.n_opt_true):
            t = self.t_nopt.values(res)
            q5, q50, q95 = np.quantile(t, [0.05, 0.5, 0.95])
            lt = math.log(p.n_opt_true)
            out |= {"nopt_err": abs(q50 - lt), "nopt_cov": float(q5 <= lt <= q95)}
        return out


def _prefix(order: list[int], pool: Pool, frac: float) -> np.ndarray:
    """Seed plus the longest prefix of order whose total FLOPs stay within frac of the pool's."""
    keep = pool.seed.copy()
    total, spent = pool.cost.sum(), pool.cost[pool.seed].sum()
    for i in order:
        if spent + pool.cost[i] > frac * total * (1 + 1e-9):
            break
        keep[i] = True
        spent += pool.cost[i]
    return keep


def design_order(
    sc: Scorer,
    target,
    frac_max: float,
    max_fits: int,
    per: str = "flop",
    horizon: str | None = None,
) -> tuple[list[int], float]:
    """Pool indices in the order the design policy picks them (until frac_max of the FLOPs).

    Runs are picked one at a time; the posterior is refitted after every pick, or, when the
    pool is larger than max_fits picks, after every k = ceil(pool / max_fits) picks, the later
    picks of a batch conditioned on the earlier picks' simulated outcomes (design.suggest)."""
    p = sc.pool
    keep = p.seed.copy()
    order: list[int] = []
    k = max(1, math.ceil((~p.seed).sum() / max_fits))
    t0 = time.perf_counter()
    while True:
        free = np.flatnonzero(~keep)
        left = frac_max * p.cost.sum() - p.cost[keep].sum()
        free = free[p.cost[free] <= left]
        if not free.size:
            break
        res = sc.fit(keep)
        spent = float(p.cost[keep].sum())
        picks = sc.Dz.suggest(
            res,
            target,
            p.N[free],
            p.D[free],
            k=k,
            budget=left,
            max_draws=DRAWS,
            per=per,
            spent=spent,
            horizon={None: None, "budget": left, "double": min(left, spent)}[horizon],
        )
        for s in picks:
            order.append(int(free[s.index]))
            keep[free[s.index]] = True
    return order, time.perf_counter() - t0


def grid_order(pool: Pool) -> list[int]:
    """Per half-decade of C (cheapest first): smallest, middle, largest N; then cheapest-first."""
    free = np.flatnonzero(~pool.seed)
    b = np.floor(np.log10(pool.cost[free]) * 2)
    first: list[int] = []
    for lev in np.unique(b):
        g = free[b == lev]
        g = g[np.argsort(pool.N[g])]
        first += list(dict.fromkeys([int(g[0]), int(g[len(g) // 2]), int(g[-1])]))
    rest = [int(i) for i in free[np.argsort(pool.cost[free])] if i not in set(first)]
    return first + rest


def replay(
    pool: Pool,
    fractions=FRACTIONS,
    n_random: int = 5,
    max_fits: int = 50,
    designs=DESIGNS,
    posterior: str = "laplace",
) -> list[dict]:
    """Rows: pool, policy, target, fraction, errors and coverage (random: mean of n_random)."""
    sc = Scorer(pool, posterior)
    free = np.flatnonzero(~pool.seed)
    orders: dict[str, list[list[int]]] = {
        "cheapest": [[int(i) for i in free[np.argsort(pool.cost[free])]]],
        "grid": [grid_order(pool)],
        "random": [
            [int(i) for i in np.random.default_rng(s).permutation(free)] for s in range(n_random)
        ],
    }
    targets = {"loss": sc.t_loss}
    if math.isfinite(pool.n_opt_true):
        targets["nopt"] = sc.t_nopt
    seconds = {}
    fmax = max(f for f in fractions if f < 1)
    for tk, tg in targets.items():
        for label, per, horizon in designs:
            name = f"{label}[{tk}]"
            o, sec = design_order(sc, tg, fmax, max_fits, per, horizon)
            orders[name] = [o]
            seconds[name] = sec
    cache: dict[bytes, dict] = {}
    rows = []
    for pol, ords in orders.items():
        for f in fractions:
            scores = []
            for o in ords:
                keep = np.ones(pool.N.size, bool) if f >= 1 else _prefix(o, pool, f)
                k = keep.tobytes()
                if k not in cache:
                    cache[k] = sc.score(sc.fit(keep))
                scores.append(cache[k] | {"used": pool.cost[keep].sum() / pool.cost.sum()})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # N_opt NaN: no planted truth
                m = {k: float(np.nanmean([s[k] for s in scores])) for k in scores[0]}
            rows.append(
                {
                    "pool": pool.name,
                    "policy": pol,
                    "fraction": f,
                    **m,
                    "seconds": seconds.get(pol, math.nan),
                }
            )
    return rows


def table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def verdict(df: pd.DataFrame) -> list[str]:
    """Per pool, target and design policy: goal met? (within 10% of full-pool error at <= 20%
    FLOPs; strictly better than every baseline at every fraction < 1)."""
    out = []
    for pool, g in df.groupby("pool", sort=False):
        for tk, col in (("loss", "loss_err"), ("nopt", "nopt_err")):
            base = g[g.policy.isin(["random", "cheapest", "grid"])].pivot(
                index="fraction", columns="policy", values=col
            )
            for label, _, _ in DESIGNS:
                pol = f"{label}[{tk}]"
                d = g[g.policy == pol].set_index("fraction")[col]
                if d.empty or d.isna().all():
                    continue
                full = float(d.loc[1.0])
                at20 = float(d.loc[0.2])
                ok20 = at20 <= 1.1 * full
                fr = [f for f in d.index if f < 1]
                beats = [f for f in fr if d.loc[f] < base.loc[f].min()]
                out.append(
                    f"{pool} {pol}: at 20% of pool FLOPs error {at20:.4g} vs full pool "
                    f"{full:.4g} ({100 * (at20 / full - 1):+.0f}%; goal <= +10%: "
                    f"{'MET' if ok20 else 'MISSED'}); strictly better than every baseline at "
                    f"{len(beats)}/{len(fr)} fractions "
                    f"({'MET' if len(beats) == len(fr) else 'MISSED'}: "
                    f"{', '.join(f'{f:g}' for f in fr if f not in beats) or 'none'} not)"
                )
    return out


def bench_design(
    quick: bool = False,
    names: list[str] | None = None,
    designs: list[str] | None = None,
    posterior: str = "laplace",
) -> tuple[pd.DataFrame, list[str]]:
    """Replay every pool (quick: planted only, 3 fractions); names/designs pick pools/policies."""
    ps = pools()
    if quick:
        ps = [p for p in ps if p.name == "planted"]
    if names:
        ps = [p for p in ps if p.name in names]
    des = [d for d in DESIGNS if not designs or d[0] in designs]
    rows = []
    for p in ps:
        t0 = time.perf_counter()
        fr = FRACTIONS if not quick else (0.05, 0.2, 1.0)
        rows += replay(p, fr, n_random=3 if quick else 5, designs=des, posterior=posterior)
        print(f"# {p.name}: {p.note}; replay {time.perf_counter() - t0:.0f} s", flush=True)
    df = table(rows)
    return df, verdict(df)


def show(df: pd.DataFrame, lines: list[str]) -> None:
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for line in lines:
        print(line)


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--quick", action="store_true", help="planted pool only, 3 fractions")
    a.add_argument("--csv", type=Path, default=None, help="also write the table here")
    a.add_argument("--pool", action="append", help="only this pool (repeatable)")
    a.add_argument(
        "--design", action="append", help=f"only this design policy (repeatable): {DESIGNS}"
    )
    a.add_argument(
        "--posterior",
        choices=("laplace", "laplace-is"),
        default="laplace",
        help="posterior of every refit (design and scoring): laplace, or laplace-is "
        "(analysis.design.laplace_is: importance-corrected, slower)",
    )
    args = a.parse_args(argv)
    df, lines = bench_design(args.quick, args.pool, args.design, args.posterior)
    show(df, lines)
    if args.csv:
        df.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
