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
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxscale.analysis import fit, frontier, isoflop
from jaxscale.cli import studyargs
from jaxscale.runs import branches, selection
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
    result: Any = None  # the analysis behind it, for sections that compare analyses
    # why this section's numbers fail their own checks (diagnostics, backtest): each one is a
    # banner at the top of the report and makes `jaxscale report` exit 1
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    """The written report: its path, the headline lines and the checks it failed."""

    path: Path
    headlines: list[str]
    failures: list[str]

    @property
    def exit_code(self) -> int:
        """0 when every check passed, 1 when any failed (EXIT_CODES)."""
        return 1 if self.failures else 0


EXIT_CODES = (
    "exit codes: 0 every check passed; 1 some number failed its own check — the Bayesian "
    "fit's diagnostics (R-hat > 1.01, low ESS, divergences) or the study's own backtest "
    "(the top budget predicted from the others falls outside its 90% bands more often than "
    "a calibrated band would) — the report then opens with a banner saying which, and "
    "extrapolations are dropped or marked; 2 bad input"
)


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).stem)}">'


def _table(df: Any, floatfmt: str = "{:.4g}") -> str:
    # Every row and column, in a box that scrolls sideways rather than eliding with "…".
    html_table = df.to_html(
        index=True, border=0, classes="t", float_format=lambda x: floatfmt.format(x), na_rep="–"
    )
    return f"<div class='scroll'>{html_table}</div>"


def _q(v: dict[str, float], fmt: str = "{:.3g}") -> str:
    return f"{fmt.format(v['q50'])} [{fmt.format(v['q5'])}, {fmt.format(v['q95'])}]"


def runs_section(runs_df: Any, convention: str = "kaplan_attn") -> Section:
    cols = [c for c in RUN_COLUMNS if c in runs_df.columns]
    counts = runs_df["status"].value_counts().to_dict() if "status" in runs_df else {}
    text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    # Trunks and cooldown branches (runs.branches): what they spent vs the same points alone.
    saved = branches.table_savings(runs_df, convention)
    lines = [f"{len(runs_df)} runs ({text})"] + ([saved.line(convention)] if saved else [])
    body = (
        f"<p>{len(runs_df)} runs: {html.escape(text)}.</p>"
        + (f"<p>{html.escape(saved.line(convention))} (trained so far).</p>" if saved else "")
        + _table(runs_df[cols].set_index("run_id") if "run_id" in cols else runs_df[cols])
    )
    return Section("Runs", body, lines)


def frontier_section(fr: frontier.Frontier, out: Path) -> Section:
    """Envelope, isoFLOP profiles and the Approach 2 exponents with intervals or the refusal."""
    paths = fr.save(out / "frontier")
    pngs = [p for p in paths if p.suffix == ".png"]
    line = fr.exponent_line()
    warn = fr.warnings()
    if fr.bias is not None and not fr.bias.significant:
        warn_html = f"<p>{html.escape(fr.bias.describe())}.</p>"
    else:
        warn_html = ""
    warn_html += "".join(f"<div class='warn'>{html.escape(w)}</div>" for w in warn)
    shown = fr.optima[[c for c in frontier.SHOWN_COLUMNS if c in fr.optima]].copy()
    shown["budget"] = [f"{b:.3g}" for b in shown["budget"]]
    body = (
        f"<p>Loss vs compute with C in {html.escape(fr.c_text)} and N = {fr.n_label}: every "
        "run's curve, the lower envelope (Kaplan 2020's L(C_min)), and per-budget parabolas in "
        f"log N through the {fr.window} sizes nearest each budget's best run, whose vertices give "
        "N_opt(C) (Hoffmann 2022 approach 2). A vertex counts only when the best run has a "
        "smaller and a larger neighbour; intervals are 90% bootstrap intervals.</p>"
        + "".join(_img(p) for p in pngs)
        + (
            _table(shown.set_index("budget"))
            if len(shown)
            else "<p>No budget has 3 or more finished sizes: no isoFLOP profiles.</p>"
        )
        + f"<p><b>{html.escape(line)}</b></p>"
        + warn_html
    )
    return Section("Frontier", body, [line], result=fr)


def reconcile_section(fr: frontier.Frontier | None, res: Any) -> Section:
    """Approach 2 beside Approach 3: do the allocation exponents agree, and which to trust."""
    if fr is None:
        raise ValueError("the frontier section failed, so there is no Approach 2 to compare")
    if res is None:
        raise ValueError("the fit section failed, so there is no Approach 3 to compare")
    a3 = fit.optimal_summary(res, float(fr.runs["C"].max()))["a"]
    varpro_a = fr.surface.allocation_exponents()[0] if fr.surface is not None else math.nan
    r = isoflop.reconcile(
        fr.a,
        (a3["q5"], a3["q50"], a3["q95"]),
        a2_refusal=fr.refusal,
        a3_ok=res.ok,
        a3_problems=res.problems,
        varpro_a=varpro_a if fr.surface_problem is None else math.nan,
        bias=fr.bias,
    )
    a2_cell = str(fr.a) if fr.a is not None else f"none: {fr.refusal}"
    rows = [
        (
            "Approach 2: isoFLOP vertices",
            a2_cell,
            f"{sum(p.bracketed for p in fr.profiles)} bracketed vertices of "
            f"{len(fr.profiles)} profiles; C in {fr.c_text}",
        ),
        (
            "Approach 3: Bayesian fit of L(N, D)",
            f"{a3['q50']:.3f} [{a3['q5']:.3f}, {a3['q95']:.3f}] (90%)",
            f"{res.loss.size} runs; diagnostics {'OK' if res.ok else 'FAILED'}",
        ),
        (
            "Approach 3: least squares (variable projection)",
            f"{varpro_a:.3f} (point estimate)" if math.isfinite(varpro_a) else "–",
            fr.surface_problem or "same runs; no interval",
        ),
    ]
    table = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
        for a, b, c in rows
    )
    verdict = {True: "agree", False: "DISAGREE", None: "cannot be compared"}[r.agree]
    headline = (
        f"a: Approach 2 {fr.a if fr.a is not None else 'gives none'} vs Approach 3 "
        f"{a3['q50']:.3f} [{a3['q5']:.3f}, {a3['q95']:.3f}] (90%): {verdict}; trust {r.trust}"
    )
    body = (
        "<p>The exponent a of N_opt ∝ C^a by two routes (Hoffmann 2022 §3.2 and §3.3): "
        "profile vertices, which assume nothing about the form of L(N, D) but only see the "
        "budgets trained, and a fit of L = E + A/N^α + B/D^β, a = β/(α+β), which assumes the "
        "form.</p><div class='scroll'><table class='t'><tr><th>route</th><th>a</th>"
        f"<th>based on</th></tr>{table}</table></div>"
        + "".join(f"<p>{html.escape(x)}</p>" for x in r.reasons)
        + f"<p><b>Verdict: they {verdict}; trust {html.escape(r.trust)}.</b></p>"
    )
    return Section("Approach 2 vs Approach 3", body, [headline], result=r)


def backtest_section(
    results: Path,
    out: Path,
    convention: str,
    *,
    draws: int,
    warmup: int,
    chains: int,
    seed: int,
    run_ids: Collection[str] | None = None,
) -> Section:
    """The study predicts its own top budget from the others (when it has >= 3 budgets)."""
    df = fit.load_fit_data(results, flops_convention=convention, run_ids=run_ids)
    prob = fit.setup(df, "chinchilla")
    c = prob.data.level_c if prob.data.level_c is not None else 6 * df["N"] * df["D"]
    n_budgets = int(fit.extrapolation.levels(c).max()) + 1
    if n_budgets < 3:
        line = (
            f"backtest: not run — {n_budgets} compute budget(s); predicting the top budget "
            "from the others needs at least 3 (train one more budget to check the fit)"
        )
        return Section("Backtest", f"<p>{html.escape(line)}</p>", [line])
    held = fit.holdout_mask(prob, "top-budget")
    bt = fit.backtests.backtest_problem(
        prob,
        held,
        "top-budget",
        chains=chains,
        warmup=warmup,
        draws=draws,
        seed=seed,
        quiet=True,
    )
    paths = bt.save(out / "backtest")
    failures = [] if bt.passed else [bt.headline()]
    verdict = "PASSED" if bt.passed else "FAILED"
    body = (
        f"<p>The fit of L(N, D) on the {bt.fit.loss.size} runs below the top budget predicts "
        f"the {bt.n} runs of the top budget. Each prediction is posterior predictive (residual "
        "noise and a model-discrepancy term growing with the decades beyond the fitted runs; "
        f"{html.escape(bt.fit.discrepancy.describe())}); the check is whether each actual loss "
        "falls in its 90% band.</p>"
        f"<p><b>Backtest {verdict}: {html.escape(bt.headline())}</b></p>"
        + _table(bt.points.set_index(bt.points.columns[0]))
        + "".join(f"<div class='warn'>{html.escape(c)}</div>" for c in bt.fit.caveats)
        + "".join(_img(p) for p in paths if p.suffix == ".png")
    )
    return Section("Backtest", body, [bt.headline()], result=bt, failures=failures)


def fit_section(
    results: Path,
    out: Path,
    convention: str,
    *,
    draws: int,
    warmup: int,
    chains: int,
    seed: int,
    run_ids: Collection[str] | None = None,
    backtest: Any = None,
) -> Section:
    """Bayesian L(N, D) fit, what it cannot tell, and extrapolations marked by their reach."""
    df = fit.load_fit_data(results, flops_convention=convention, run_ids=run_ids)
    res = fit.fit(
        df,
        "chinchilla",
        chains=chains,
        warmup=warmup,
        draws=draws,
        seed=seed,
        quiet=True,
        discrepancy="estimate",
    )
    c_max = float(df["C"].max()) if "C" in df else float((6 * df["N"] * df["D"]).max())
    targets = [10 * c_max, 100 * c_max]
    paths = res.save(out / "fit", target_compute=targets[0])
    a = fit.optimal_summary(res, targets[0])["a"]
    lines = [
        f"Chinchilla fit: N_opt ∝ C^a with a = {_q(a)} (median [90% interval]); "
        f"diagnostics {'OK' if res.ok else 'FAILED: ' + '; '.join(res.problems)}"
    ]
    failures = [] if res.ok else ["fit diagnostics FAILED: " + "; ".join(res.problems)]
    untrusted = backtest is not None and not backtest.passed
    reach = float(backtest.points["decades_beyond"].max()) if backtest is not None else 0.0
    if not res.ok:
        extrap = (
            "<p class='err'>Extrapolations not shown: the fit failed its diagnostics, so its "
            "intervals are not a posterior. Rerun with more --fit-warmup/--fit-draws, or see "
            "the problems above.</p>"
        )
        lines.append("extrapolations: not shown (fit diagnostics failed)")
    else:
        rows = []
        for c in targets:
            e = fit.extrapolation_summary(res, c)
            rows.append(
                f"<tr><td>{c:.3g}</td><td>{e['decades_C']:.2g} / {e['decades_N']:.2g}</td>"
                f"<td>{_q(e['N_opt'])}</td><td>{_q(e['D_opt'])}</td>"
                f"<td>{_q(e['tokens_per_param'])}</td><td>{_q(e['loss'], '{:.4f}')}</td></tr>"
            )
            mark = "UNTRUSTED (the study fails its own backtest): " if untrusted else ""
            if backtest is not None and e["decades"] > reach:
                mark += f"beyond the {reach:.2g} decades the backtest checked: "
            lines.append(f"extrapolation: {mark}{fit.extrapolation_line(e)}")
        warn = (
            "<div class='err'>UNTRUSTED: the study fails its own backtest (see Backtest), so "
            "these extrapolations, further out than the backtest reached, are not supported by "
            "the data.</div>"
            if untrusted
            else ""
        )
        extrap = (
            warn + "<div class='scroll'><table class='t'><tr><th>C (FLOPs)</th>"
            "<th>decades beyond the data: C / N</th><th>N_opt</th><th>D_opt</th><th>D/N</th>"
            "<th>predicted loss at the optimum</th></tr>" + "".join(rows) + "</table></div>"
            "<p>Medians with 90% intervals; the loss is posterior predictive, with residual "
            f"noise and {html.escape(res.discrepancy.describe())}. C here is 6ND. The reach "
            "column says how far past the runs each answer goes: the further, the more it "
            "rests on the functional form"
            + (
                f"; the study's own backtest checked predictions up to {reach:.2g} decades out"
                if backtest is not None
                else "; no backtest checked any of it (fewer than 3 budgets)"
            )
            + ".</p>"
        )
    body = (
        f"<p>L(N, D) = E + A/N^α + B/D^β (Hoffmann 2022) fitted by NUTS ({chains} chains × "
        f"{draws} draws, Student-t noise on log loss) to {res.loss.size} runs in "
        f"{res.seconds:.1f} s. Intervals: {fit.INTERVAL}. Diagnostics: "
        f"<b>{'OK' if res.ok else 'FAILED'}</b> {html.escape('; '.join(res.problems))}</p>"
        + _table(res.table())
        + "".join(f"<div class='warn'>{html.escape(c)}</div>" for c in res.caveats)
        + "<h3>Compute-optimal allocation, extrapolated</h3>"
        + extrap
        + "".join(_img(p) for p in paths if p.suffix == ".png")
    )
    lines += [f"caveat: {c.split(' — ')[0]}" for c in res.caveats]
    return Section("Scaling-law fit", body, lines, result=res, failures=failures)


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
img{max-width:100%;margin:.5em 0;border:1px solid #eee}
table.t{border-collapse:collapse;font-size:.85em;margin:.5em 0}
table.t td,table.t th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:right}
.err{background:#fff3f3;border-left:4px solid #c00;padding:.5em 1em;white-space:pre-wrap}
.warn{background:#fffbe6;border-left:4px solid #d90;padding:.3em 1em;margin:.3em 0}
.scroll{overflow-x:auto;max-width:100%}
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
    sections: tuple[str, ...] = ("runs", "frontier", "backtest", "fit", "reconcile"),
    study: str | Path | None = None,
    setting: str = "default",
    all_runs: bool = False,
) -> Report:
    """Write <out>/report.html (images inlined); the Report holds it, the headline lines (the
    first says whether every check passed) and the failed checks.

    The runs reported are `study`'s, else those of the study recorded in the results directory,
    else all of them (runs.selection); the first headline says which and what was left out.
    """

    results = Path(results)
    dfs = results_lib.load(results)
    if not len(dfs[0]):
        raise ValueError(f"{results}: no runs found (expected <results>/<run_id>/summary.json)")
    sel = selection.select(
        results,
        list(dfs[0]["run_id"]),
        study=study,
        setting=setting,
        all_runs=all_runs,
        runs_df=dfs[0],
    )
    dfs = sel.frames(dfs)
    if not len(dfs[0]):
        raise ValueError(f"{results}: none of the selected runs are there ({sel.note})")
    out = Path(out) if out is not None else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    builders = {
        "runs": lambda: runs_section(dfs[0], convention),
        "frontier": lambda: frontier_section(frontier.analyse(dfs, convention), out),
        "backtest": lambda: backtest_section(
            results,
            out,
            convention,
            draws=fit_draws,
            warmup=fit_warmup,
            chains=fit_chains,
            seed=seed,
            run_ids=sel.run_ids,
        ),
        "fit": lambda: fit_section(
            results,
            out,
            convention,
            draws=fit_draws,
            warmup=fit_warmup,
            chains=fit_chains,
            seed=seed,
            run_ids=sel.run_ids,
            backtest=next((s.result for s in built if isinstance(s.result, fit.Backtest)), None),
        ),
        # Compares what the frontier and fit sections computed (None where they failed).
        "reconcile": lambda: reconcile_section(
            next((s.result for s in built if isinstance(s.result, frontier.Frontier)), None),
            next((s.result for s in built if isinstance(s.result, fit.FitResult)), None),
        ),
    }
    built: list[Section] = []

    for name in sections:
        try:
            with warnings.catch_warnings():
                # the sections print these as caveats and failed checks; once is enough
                for category in (fit.PriorDominatedWarning, fit.ReplicatesMergedWarning):
                    warnings.simplefilter("ignore", category)
                built.append(builders[name]())
        except Exception as e:  # noqa: BLE001 - one failed section must not sink the report
            warnings.warn(f"report section {name!r} failed: {e}", stacklevel=2)
            msg = "".join(traceback.format_exception_only(type(e), e)).strip()
            built.append(
                Section(
                    name.title(), f"<div class='err'>{html.escape(msg)}</div>", [f"{name}: {msg}"]
                )
            )
    failures = [f for s in built for f in s.failures]
    verdict = (
        "checks: every number passed its own checks (fit diagnostics, backtest)"
        if not failures
        else f"checks: {len(failures)} FAILED — " + " | ".join(failures)
    )
    banner = (
        "<div class='err'><b>These results fail their own checks; read every number below "
        "with that in mind (exit code 1):</b><ul>"
        + "".join(f"<li>{html.escape(f)}</li>" for f in failures)
        + "</ul></div>"
        if failures
        else ""
    )
    stamp = time.strftime("%Y-%m-%d %H:%M")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>jaxscale report: "
        f"{html.escape(results.name)}</title><style>{CSS}</style></head><body>"
        f"<h1>Scaling study: {html.escape(results.name)}</h1>"
        f"<p>Results directory <code>{html.escape(str(results))}</code>; generated {stamp} by "
        f"jaxscale. Runs: {html.escape(sel.note)}.</p>"
        + banner
        + "".join(f"<h2>{html.escape(s.title)}</h2>{s.body}" for s in built)
        + "</body></html>"
    )
    path = out / "report.html"
    path.write_text(page)
    headlines = [verdict, f"runs: {sel.note}"] + [line for s in built for line in s.headline]
    (out / "headlines.json").write_text(json.dumps(headlines, indent=2))
    return Report(path, headlines, failures)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `jaxscale report RESULTS`."""
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a results directory",
        description="Runs table, loss-vs-compute frontier, isoFLOP optima, the study's own "
        "backtest (the top budget predicted from the others, with >= 3 budgets) and a Bayesian "
        "Chinchilla fit with extrapolations marked by how far beyond the runs they reach, in "
        "one HTML file with the plots inlined. Every interval is a central 90% interval.",
        epilog=EXIT_CODES,
    )
    p.add_argument("results", help="results directory of a sweep")
    p.add_argument("--out", help="output directory (default <results>/report)")
    p.add_argument("--convention", default="kaplan_attn", help="FLOP convention for C")
    p.add_argument("--fit-draws", type=int, default=1000, help="NUTS draws per chain")
    p.add_argument("--fit-warmup", type=int, default=1000, help="NUTS warmup per chain")
    p.add_argument("--seed", type=int, default=0, help="random seed of the fit")
    studyargs.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run `jaxscale report`; EXIT_CODES."""
    rep = build_report(
        args.results,
        args.out,
        convention=args.convention,
        fit_draws=args.fit_draws,
        fit_warmup=args.fit_warmup,
        seed=args.seed,
        study=args.study,
        setting=args.setting,
        all_runs=args.all_runs,
    )
    for line in rep.headlines:
        print(line)
    print(f"report: {rep.path}")
    return rep.exit_code
