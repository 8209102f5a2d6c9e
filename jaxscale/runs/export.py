"""A results directory as three tidy tables (runs, curves, fits) in CSV and Parquet.

runs and curves are runs.results.load's tables, so their columns carry their conventions
(`n_params_nonembedding`, `flops_<convention>` for every core.flops convention); fits are the
parameter tables of every `jaxscale fit --out` / report fit saved under the directory.
Non-scalar cells (per-position losses, tuples in configs) are JSON text, so CSV and Parquet
hold the same frame.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from jaxscale.runs import results as results_lib
from jaxscale.runs import store
from jaxscale.runs.rundir import CONFIG, SUMMARY, run_dirs

TABLES = ("runs", "curves", "fits")
FORMATS = ("csv", "parquet")
# Keys of the summary.json analysis.fit.FitResult.save writes (a run's summary has none of them).
_FIT_KEYS = ("form", "method", "summary")
_FIT_COLUMNS = ["fit", "form", "method", "n_points", "ok", "noise", "parameter", "point"]


@dataclass(frozen=True)
class Export:
    """The three tables of one export."""

    runs: pd.DataFrame
    curves: pd.DataFrame
    fits: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name) for name in TABLES}

    def write(self, out: str | os.PathLike, formats: Sequence[str] = FORMATS) -> list[Path]:
        """<out>/<table>.<format> for each table and format (see parse_formats); all files or
        none appear."""
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; pass a directory")
        out.mkdir(parents=True, exist_ok=True)
        staged: list[tuple[Path, Path]] = []
        try:
            for name, df in self.tables().items():
                for fmt in formats:
                    final = out / f"{name}.{fmt}"
                    tmp = out / f".{name}.{fmt}.tmp"
                    staged.append((tmp, final))
                    if fmt == "csv":
                        df.to_csv(tmp, index=False)
                    else:
                        df.to_parquet(tmp, index=False)
        except BaseException:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            raise
        for tmp, final in staged:
            os.replace(tmp, final)
        return [final for _, final in staged]


def parse_formats(text: str) -> tuple[str, ...]:
    """'csv,parquet' -> ('csv', 'parquet'); ValueError naming an unknown or missing format."""
    formats = tuple(f.strip() for f in text.split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(
            f"--format {text!r}: unknown {', '.join(bad) or 'empty'}; choose from {','.join(FORMATS)}"
        )
    return formats


def gather(results: str | os.PathLike, run_ids: Collection[str] | None = None) -> Export:
    """The runs (restricted to run_ids when given), their curves and every saved fit.
    FileNotFoundError if `results` holds no run; ValueError if run_ids selects none."""
    run_dirs(results, require=True)
    runs, curves = results_lib.load(results)
    if run_ids is not None:
        runs = runs[runs["run_id"].isin(run_ids)].reset_index(drop=True)
        curves = curves[curves["run_id"].isin(run_ids)].reset_index(drop=True)
        if not len(runs):
            raise ValueError(
                f"none of the selected runs is in {os.fspath(results)}; try --all-runs"
            )
    return Export(runs=_tidy(runs), curves=_tidy(curves), fits=_tidy(fits(results)))


def fits(results: str | os.PathLike) -> pd.DataFrame:
    """One row per parameter of every saved fit under `results` (run directories skipped)."""
    root = Path(results)
    rows = []
    for here, dirs, files in os.walk(root):
        if CONFIG in files:  # a run directory: its summary.json is the run's, not a fit
            dirs.clear()
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        info = store.read_json(Path(here) / SUMMARY) if SUMMARY in files else None
        if not isinstance(info, dict) or not all(k in info for k in _FIT_KEYS):
            continue
        where = Path(here).relative_to(root).as_posix()
        point = info.get("point") or {}
        for param, stats in (info["summary"] or {}).items():
            rows.append(
                {
                    "fit": where,
                    "form": info["form"],
                    "method": info["method"],
                    "n_points": info.get("n_points"),
                    "ok": info.get("ok"),
                    "noise": info.get("noise"),
                    "parameter": param,
                    "point": point.get(param),
                    **stats,
                }
            )
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=_FIT_COLUMNS)


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Lists, tuples and dicts as JSON text and empty text as missing, so a CSV cell and a
    Parquet cell read back alike."""
    df = df.replace("", None)
    for c in df.columns:
        if df[c].isna().all():  # e.g. unset config keys: CSV reads an empty column as float
            df[c] = df[c].astype(float)
        elif df[c].map(lambda v: isinstance(v, (list, tuple, dict))).any():
            df[c] = df[c].map(lambda v: json.dumps(v) if isinstance(v, (list, tuple, dict)) else v)
    return df.reset_index(drop=True)
