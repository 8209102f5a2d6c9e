"""Load a results directory into pandas: one row per run, one row per logged step.

Every run lives in ``<results>/<run_id>/``, read through runs.rundir.RunDir. The loader never
lets one damaged run stop an analysis: a corrupt metrics line is skipped with a warning naming
the file and line, a run whose config is unreadable or invalid is skipped with a warning naming
it, and an unreadable summary makes the run count as incomplete (its numbers then come from its
metrics). Paths may be local or, when etils.epath is installed, any filesystem it supports
(gs://...).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import pandas as pd

from jaxscale.config import ConfigError, RunConfig
from jaxscale.core import flops
from jaxscale.runs.rundir import CONFIG, SUMMARY, RunDir, run_dirs

CURVE_COLUMNS = ("run_id", "step", "tokens", "loss", "eval_loss", "lr")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _load_config(run: RunDir) -> RunConfig | None:
    try:
        return run.read_config()
    except ConfigError as e:
        warnings.warn(f"run {run.name}: {e}; run skipped", stacklevel=3)
        return None


def load(path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs_df, curves_df) for a results directory (or a single run directory).

    runs_df: run_id, name, status ('trunk' for a finished trunk of runs.branches: no point of a
    scaling law), config columns flattened (model.d_model, train.lr, ...),
    n_params, n_params_nonembedding, n_params_embedding, tokens, steps, loss (final eval loss),
    train_loss, adamw_tau (B/(ηλD), inf without decay; RunConfig.adamw_timescale),
    flops_<convention> for every flops.CONVENTIONS, and summary extras.
    curves_df: run_id, step, tokens, loss (train), eval_loss (NaN off eval steps), lr, and
    flops_<convention> = flops_per_token × tokens seen so far.
    """

    run_rows: list[dict] = []
    curve_frames: list[pd.DataFrame] = []
    for run in run_dirs(path):
        cfg = _load_config(run)
        if cfg is None:
            continue
        run_id = cfg.run_id()
        if run_id != run.name:
            warnings.warn(
                f"run {run.name}: its {CONFIG} hashes to {run_id}, not the directory name; "
                "using the directory name",
                stacklevel=2,
            )
            run_id = run.name
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            metrics = run.read_metrics()
            summary = run.read_summary()
        for w in caught:
            warnings.warn(f"run {run_id}: {w.message}", stacklevel=2)
        if summary is None and run.has_summary_file():
            warnings.warn(f"run {run_id}: treating as incomplete (bad {SUMMARY})", stacklevel=2)
        summary = summary or {}
        mc = cfg.model
        fpt = {c: float(flops.flops_per_token(mc, c)) for c in flops.CONVENTIONS}

        curve = pd.DataFrame(metrics)
        if len(curve):
            for c in CURVE_COLUMNS[1:]:
                if c not in curve:
                    curve[c] = np.nan
            curve = curve[[c for c in curve.columns if c != "flops"]]
            curve["step"] = pd.to_numeric(curve["step"], errors="coerce")
            curve = curve.dropna(subset=["step"]).drop_duplicates("step", keep="last")
            curve = curve.sort_values("step")
            curve["tokens"] = curve["tokens"].fillna(curve["step"] * cfg.tokens_per_step)
            curve.insert(0, "run_id", run_id)
            for c, f in fpt.items():
                curve[f"flops_{c}"] = f * curve["tokens"].astype(float)
            curve_frames.append(curve)

        last = curve.iloc[-1] if len(curve) else None
        evals = curve["eval_loss"].dropna() if len(curve) else pd.Series(dtype=float)
        lock = run.lock_info()
        status = summary.get("status") or ("running" if lock else "incomplete")
        if status == "done" and cfg.train.branch_points:
            # A constant-LR trunk (runs.branches) is no point of a scaling law: its branches
            # are. Its own status keeps it out of every analysis that reads finished runs.
            status = "trunk"
        tokens = _num(summary.get("tokens"))
        if math.isnan(tokens) and last is not None:
            tokens = float(last["tokens"])
        steps = _num(summary.get("steps"))
        if math.isnan(steps) and last is not None:
            steps = float(last["step"])
        loss = _num(summary.get("loss"))
        if math.isnan(loss) and len(evals):
            loss = float(evals.iloc[-1])
        train_loss = _num(summary.get("train_loss"))
        if math.isnan(train_loss) and last is not None:
            train_loss = float(last["loss"])
        row: dict[str, Any] = {
            "run_id": run_id,
            "name": cfg.name,
            "status": status,
            "error": summary.get("error", ""),
            "n_params": mc.n_params,
            "n_params_nonembedding": mc.n_params_nonembedding,
            "n_params_embedding": mc.n_params_embedding,
            "tokens": tokens,
            "steps": steps,
            "planned_tokens": cfg.total_tokens,
            "loss": loss,
            "train_loss": train_loss,
            # From the config, so runs trained before summaries recorded τ still have it.
            "adamw_tau": cfg.adamw_timescale,
        }
        for c, f in fpt.items():
            row[f"flops_{c}"] = f * tokens if not math.isnan(tokens) else math.nan
        for k in ("wall_time_s", "tokens_per_s", "mfu"):
            row[k] = _num(summary.get(k))
        row.update(_flatten({k: v for k, v in cfg.to_dict().items() if k != "name"}))
        row["path"] = os.fspath(run.path)
        run_rows.append(row)

    runs_df = pd.DataFrame(run_rows)
    if not len(runs_df):
        runs_df = pd.DataFrame(columns=["run_id", "name", "status", "loss", "tokens"])
    curves_df = (
        pd.concat(curve_frames, ignore_index=True)
        if curve_frames
        else pd.DataFrame(columns=list(CURVE_COLUMNS))
    )
    return runs_df, curves_df


def compute(df: pd.DataFrame, convention: str) -> pd.Series:
    """Training compute C under `convention` for each row of runs_df or curves_df."""

    flops.check_convention(convention)
    col = f"flops_{convention}"
    if col not in df:
        raise ValueError(f"no {col} column: pass a DataFrame from jaxscale.runs.results.load")
    return df[col].astype(float)
