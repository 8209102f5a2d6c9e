"""Which runs of a results directory an analysis reads: one study's, by run_id (issue 15).

A results directory can hold runs of several studies, or of one study before and after an
edit (every config change is a new run_id, so a changed LR leaves the old runs beside the new).
`jaxscale study` and `jaxscale sweep run` record the study's name, file, setting and run_ids in
<results>/study.json; analyses then read only those runs unless told otherwise, and say in one
line what they left out. The record holds run_ids, not just a path, so reading it never
executes a study file (study.py: only files named on the command line are executed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from jaxscale.config import ConfigError, RunConfig
from jaxscale.core import provenance
from jaxscale.runs import store
from jaxscale.runs.rundir import RunDir, RunMismatch
from jaxscale.runs.study import Study, load_study

RECORD = "study.json"
# Flattened config columns of runs_df (results.load): what the runs of a directory differ in.
_CONFIG_PREFIXES = ("model.", "train.", "data.", "mesh.")


def write_record(
    results: str | os.PathLike, study: Study, setting: str, runs: Sequence[RunConfig]
) -> Path:
    """Record in <results>/study.json that the directory holds `study`'s runs for `setting`."""
    path = Path(results) / RECORD
    store.write_json_atomic(
        path,
        {
            "study": study.name,
            "path": str(study.path),
            "setting": setting,
            "run_ids": sorted(r.run_id() for r in runs),
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    return path


def read_record(results: str | os.PathLike) -> dict | None:
    """The study recorded for a results directory, or None (also for a malformed record)."""
    rec = store.read_json(store.as_path(results) / RECORD)
    ok = isinstance(rec, dict) and isinstance(rec.get("run_ids"), list)
    return rec if ok else None


@dataclass(frozen=True)
class Selection:
    """The run_ids an analysis reads (None: every run in the directory) and one line saying so."""

    run_ids: frozenset[str] | None
    note: str

    def apply(self, df: pd.DataFrame) -> pd.DataFrame:
        """The rows of a runs or curves table (run_id column) that belong to the selection."""
        if self.run_ids is None or not len(df):
            return df
        return df[df["run_id"].isin(self.run_ids)].reset_index(drop=True)

    def frames(self, dfs: tuple[pd.DataFrame, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(runs_df, curves_df) restricted to the selection."""
        return self.apply(dfs[0]), self.apply(dfs[1])


def _differing(runs_df: pd.DataFrame | None) -> str:
    if runs_df is None or not len(runs_df):
        return ""
    cols = [c for c in runs_df.columns if c.startswith(_CONFIG_PREFIXES)]
    keys = [c for c in cols if runs_df[c].astype(str).nunique() > 1]
    return f" (their configs differ in {', '.join(keys)})" if keys else ""


def select(
    results: str | os.PathLike,
    run_ids_present: Sequence[str],
    *,
    study: str | os.PathLike | None = None,
    setting: str = "default",
    all_runs: bool = False,
    runs_df: pd.DataFrame | None = None,
) -> Selection:
    """The runs to analyse: --study's, else the recorded study's, else all (said in `note`).

    run_ids_present: the run directories under results; runs_df (optional) lets the note say
    which config keys the runs differ in when no study restricts them.
    """
    if study is not None and all_runs:
        raise ValueError("--study and --all-runs exclude each other")
    present = set(run_ids_present)
    if all_runs:
        check_semantics(results, present)
        return Selection(
            None, f"using all {len(present)} runs in {results} (--all-runs){_differing(runs_df)}"
        )
    if study is not None:
        st = load_study(study)
        ids, where = {r.run_id() for r in st.runs(setting)}, f"study {st.name} [{setting}]"
    else:
        rec = read_record(results)
        if rec is None:
            check_semantics(results, present)
            return Selection(
                None,
                f"no study recorded in {results}: using all {len(present)} runs there"
                f"{_differing(runs_df)}; pass --study FILE [--setting S] to use one study's runs",
            )
        ids = set(rec["run_ids"])
        where = f"study {rec.get('study', '?')} [{rec.get('setting', '?')}] (recorded in {RECORD})"
    used, other, missing = ids & present, present - ids, ids - present
    check_semantics(results, used)
    note = f"using the {len(used)} runs of {where}"
    if other:
        note += f"; {results} holds {len(other)} other run(s), left out (--all-runs includes them)"
    if missing:
        note += f"; {len(missing)} of the study's {len(ids)} runs are not in {results} yet"
    return Selection(frozenset(ids), note)


def check_semantics(results: str | os.PathLike, run_ids: set[str]) -> None:
    """ConfigError if the runs were trained under different training semantics
    (core.provenance.TRAINING_SEMANTICS): their run IDs match, their training does not."""
    by: dict[int | None, list[str]] = {}
    for rid in sorted(run_ids):
        try:
            sessions = RunDir(store.as_path(results) / rid).sessions()
        except RunMismatch:
            continue  # an unreadable manifest: results.load warns about the run itself
        if sessions:
            by.setdefault(provenance.semantics_of(sessions), []).append(rid)
    if len(by) > 1:
        parts = "; ".join(
            f"{provenance.semantics_label(k)}: {len(v)} runs, e.g. {v[0]}"
            for k, v in sorted(by.items(), key=lambda kv: kv[0] or 0)
        )
        raise ConfigError(
            f"{results} mixes runs trained under different training semantics ({parts}); "
            "the same config trained differently before (core/provenance.py), so they can't be "
            "analysed together: retrain the study into a fresh results directory"
        )
