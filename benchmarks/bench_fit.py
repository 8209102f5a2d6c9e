"""Benchmark: Chinchilla-form NUTS (4 x (1000 + 1000)) vs the Huber/L-BFGS bootstrap baseline."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/bench_fit.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import DATA_DIR  # noqa: E402

DATA = DATA_DIR / "chinchilla_epoch_svg_extracted.csv"


def bench_fit() -> list[dict]:
    """Rows (name, value, unit, note) for NUTS and bootstrap wall/CPU time and interval widths."""
    import numpy as np
    import pandas as pd

    from jaxscale.analysis import fit as F

    df = pd.read_csv(DATA)  # part of the repository: a missing file fails loudly
    df = df[df["loss"] < sorted(df["loss"])[-5]]
    rows = []

    def timed(fn):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - t, time.process_time() - c

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        res, wall, cpu = timed(lambda: F.fit(df, "chinchilla", chains=4, warmup=1000, draws=1000))
        _, wall2, cpu2 = timed(
            lambda: F.fit(df, "chinchilla", chains=4, warmup=1000, draws=1000, seed=1)
        )
        boot, bwall, bcpu = timed(lambda: F.fit_huber(df, n_boot=200))
    d = res.diagnostics
    note = (
        f"240 pts, 4x(1000+1000), max R-hat {d['max_r_hat']:.3f}, min ESS {d['min_ess']:.0f}, "
        f"{d['divergences']} div, {d['mean_tree_steps']:.1f} leapfrog/draw"
    )
    rows += [
        dict(
            name="nuts_chinchilla_first_call", value=wall, unit="s", note=note + ", incl. compile"
        ),
        dict(name="nuts_chinchilla_first_call_cpu", value=cpu, unit="s cpu", note="process time"),
        dict(
            name="nuts_chinchilla_cached", value=wall2, unit="s", note="same shapes, no recompile"
        ),
        dict(name="nuts_chinchilla_cached_cpu", value=cpu2, unit="s cpu", note="process time"),
        dict(
            name="bootstrap_huber_chinchilla",
            value=bwall,
            unit="s",
            note="4500-pt grid screen, L-BFGS from best 64, 200 bootstraps, incl. compile",
        ),
        dict(name="bootstrap_huber_chinchilla_cpu", value=bcpu, unit="s cpu", note="process time"),
    ]
    for k in ("E", "alpha", "beta"):
        for tag, r in (("nuts", res), ("bootstrap", boot)):
            lo, hi = np.quantile(r.flat(k), [0.025, 0.975])
            rows.append(
                dict(
                    name=f"{tag}_95%_width_{k}",
                    value=hi - lo,
                    unit="-",
                    note=f"[{lo:.4g}, {hi:.4g}], median {np.median(r.flat(k)):.4g}",
                )
            )
    return rows


if __name__ == "__main__":
    rows = bench_fit()
    w = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{w}}  {r['value']:>10.4g} {r['unit']:<6} {r['note']}")
