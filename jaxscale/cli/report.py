"""`jaxscale report`: one self-contained HTML page for a study's results directory."""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxscale.analysis import fit, frontier
from jaxscale.runs import results as results_lib

RUN_COLUMNS = [
    "run_id",
    "name",
    "status",
    "model.d_model",
    "model.n_layers",
    "n_params_nonembedding",
    "tokens",
    "steps",
    "loss",
    "tokens_per_s",
    "mfu",
]


@dataclass
class Section:
    """A titled block of HTML, and the headline lines it contributes to the CLI summary."""

    title: str
    body: str
    headline: list[str] = field(default_factory=list)


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).stem)}">'


def _table(df: Any, floatfmt: str = "{:.4g}") -> str:
    return df.to_html(
        index=True, border=0, classes="t", float_format=lambda x: floatfmt.format(x), na_rep="–"
    )


def _q(v: dict[str, float], fmt: str = "{:.3g}") -> str:
    return f"{fmt.format(v['q50'])} [{fmt.format(v['q5'])}, {fmt.format(v['q95'])}]"


def runs_section(runs_df: Any) -> Section:
    cols = [c for c in RUN_COLUMNS if c in runs_df.columns]
    counts = runs_df["status"].value_counts().to_dict() if "status" in runs_df else {}
    text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    body = f"<p>{len(runs_df)} runs: {html.escape(text)}.</p>" + _table(
        runs_df[cols].set_index("run_id") if "run_id" in cols else runs_df[cols]
    )
    return Section("Runs", body, [f"{len(runs_df)} runs ({text})"])


def frontier_section(dfs: tuple, out: Path, convention: str) -> Section:

    fr = frontier.analyse(dfs, convention)
    paths = fr.save(out / "frontier")
    pngs = [p for p in paths if p.suffix == ".png"]
    ex = fr.exponents()
    lines = []
    if math.isfinite(ex.get("a", math.nan)):
        lines.append(
            f"isoFLOP vertices: N_opt ∝ C^{ex['a']:.3f}, D_opt ∝ C^{ex['b']:.3f} "
            f"({convention} FLOPs; Hoffmann 2022 approach 2)"
        )
    body = (
        f"<p>Loss vs compute under the <code>{convention}</code> convention: every run's curve, "
        "the lower envelope (Kaplan 2020's L(C_min)), and per-budget parabolas in log N whose "
        "vertices give N_opt(C) (Hoffmann 2022 approach 2).</p>"
        + "".join(_img(p) for p in pngs)
        + (_table(fr.optima) if len(fr.optima) else "<p>No isoFLOP groups in these runs.</p>")
        + "".join(f"<p><b>{html.escape(line)}</b></p>" for line in lines)
    )
    return Section("Frontier", body, lines)


def fit_section(
    results: Path, out: Path, convention: str, *, draws: int, warmup: int, chains: int, seed: int
) -> Section:

    df = fit.load_fit_data(results, flops_convention=convention)
    res = fit.fit(df, "chinchilla", chains=chains, warmup=warmup, draws=draws, seed=seed)
    c_max = float(df["C"].max()) if "C" in df else float((6 * df["N"] * df["D"]).max())
    targets = [10 * c_max, 100 * c_max]
    paths = res.save(out / "fit", target_compute=targets[0])
    rows, lines = [], []
    for c in targets:
        s = fit.optimal_summary(res, c)
        pred = fit.predict(res, {"N": [s["N_opt"]["q50"]], "D": [s["D_opt"]["q50"]]})
        rows.append(
            f"<tr><td>{c:.3g}</td><td>{_q(s['N_opt'])}</td><td>{_q(s['D_opt'])}</td>"
            f"<td>{_q(s['tokens_per_param'])}</td>"
            f"<td>{pred['q50'][0]:.4f} [{pred['q5'][0]:.4f}, {pred['q95'][0]:.4f}]</td></tr>"
        )
    a = fit.optimal_summary(res, targets[0])["a"]
    lines.append(
        f"Chinchilla fit: N_opt ∝ C^a with a = {_q(a)} (median [90% interval]); "
        f"diagnostics {'OK' if res.ok else 'FAILED: ' + '; '.join(res.problems)}"
    )
    summ = res.table()
    body = (
        f"<p>L(N, D) = E + A/N^α + B/D^β (Hoffmann 2022) fitted by NUTS ({chains} chains × "
        f"{draws} draws, Student-t noise on log loss) to {res.loss.size} runs in "
        f"{res.seconds:.1f} s. Diagnostics: <b>{'OK' if res.ok else 'FAILED'}</b> "
        f"{html.escape('; '.join(res.problems))}</p>"
        + _table(summ)
        + "<h3>Compute-optimal allocation, extrapolated</h3>"
        "<table class='t'><tr><th>C (FLOPs)</th><th>N_opt</th><th>D_opt</th><th>D/N</th>"
        "<th>predicted loss at the optimum</th></tr>" + "".join(rows) + "</table>"
        "<p>Medians with 90% credible intervals. Extrapolations this far beyond the data are "
        "only as good as the functional form; read the band, not the point.</p>"
        + "".join(_img(p) for p in paths if p.suffix == ".png")
    )
    return Section("Scaling-law fit", body, lines)


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
img{max-width:100%;margin:.5em 0;border:1px solid #eee}
table.t{border-collapse:collapse;font-size:.85em;margin:.5em 0}
table.t td,table.t th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:right}
.err{background:#fff3f3;border-left:4px solid #c00;padding:.5em 1em;white-space:pre-wrap}
"""


def build_report(
    results: str | Path,
    out: str | Path | None = None,
    *,
    convention: str = "kaplan_attn",
    fit_draws: int = 1000,
    fit_warmup: int = 1000,
    fit_chains: int = 4,
    seed: int = 0,
    sections: tuple[str, ...] = ("runs", "frontier", "fit"),
) -> tuple[Path, list[str]]:
    """Write <out>/report.html (images inlined) and return it with the headline lines."""

    results = Path(results)
    dfs = results_lib.load(results)
    if not len(dfs[0]):
        raise ValueError(f"{results}: no runs found (expected <results>/<run_id>/summary.json)")
    out = Path(out) if out is not None else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    builders = {
        "runs": lambda: runs_section(dfs[0]),
        "frontier": lambda: frontier_section(dfs, out, convention),
        "fit": lambda: fit_section(
            results,
            out,
            convention,
            draws=fit_draws,
            warmup=fit_warmup,
            chains=fit_chains,
            seed=seed,
        ),
    }
    built: list[Section] = []
    for name in sections:
        try:
            built.append(builders[name]())
        except Exception as e:  # noqa: BLE001 - one failed section must not sink the report
            warnings.warn(f"report section {name!r} failed: {e}", stacklevel=2)
            msg = "".join(traceback.format_exception_only(type(e), e)).strip()
            built.append(
                Section(
                    name.title(), f"<div class='err'>{html.escape(msg)}</div>", [f"{name}: {msg}"]
                )
            )
    stamp = time.strftime("%Y-%m-%d %H:%M")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>jaxscale report: "
        f"{html.escape(results.name)}</title><style>{CSS}</style></head><body>"
        f"<h1>Scaling study: {html.escape(results.name)}</h1>"
        f"<p>Results directory <code>{html.escape(str(results))}</code>; generated {stamp} by "
        "jaxscale.</p>"
        + "".join(f"<h2>{html.escape(s.title)}</h2>{s.body}" for s in built)
        + "</body></html>"
    )
    path = out / "report.html"
    path.write_text(page)
    headlines = [line for s in built for line in s.headline]
    (out / "headlines.json").write_text(json.dumps(headlines, indent=2))
    return path, headlines


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale report RESULTS`."""
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a results directory",
        description="Runs table, loss-vs-compute frontier, isoFLOP optima and a Bayesian "
        "Chinchilla fit with extrapolations, in one HTML file with the plots inlined.",
    )
    p.add_argument("results", help="results directory of a sweep")
    p.add_argument("--out", help="output directory (default <results>/report)")
    p.add_argument("--convention", default="kaplan_attn", help="FLOP convention for C")
    p.add_argument("--fit-draws", type=int, default=1000, help="NUTS draws per chain")
    p.add_argument("--fit-warmup", type=int, default=1000, help="NUTS warmup per chain")
    p.add_argument("--seed", type=int, default=0, help="random seed of the fit")
    return p


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale report`."""
    path, lines = build_report(
        args.results,
        args.out,
        convention=args.convention,
        fit_draws=args.fit_draws,
        fit_warmup=args.fit_warmup,
        seed=args.seed,
    )
    for line in lines:
        print(line)
    print(f"report: {path}")
    return 0
