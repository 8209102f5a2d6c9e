"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from jaxscale.config import RunConfig
from jaxscale.runs.rundir import RunDir

# --- Reference data: data/ at the repository root (provenance in data/README.md) ---

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The repository's reference-data folder; missing data fails the test, never skips it."""
    if not DATA_DIR.is_dir():
        pytest.fail(f"reference data folder missing: {DATA_DIR} (part of the repository)")
    return DATA_DIR


@pytest.fixture(scope="session")
def chinchilla_csv(data_dir: Path) -> Path:
    """The 245 digitised Hoffmann 2022 final losses (Besiroglu 2024 replication data)."""
    path = data_dir / "chinchilla_epoch_svg_extracted.csv"
    if not path.is_file():
        pytest.fail(f"reference data missing: {path} (see data/README.md)")
    return path


# --- Planted runs: run directories written through RunDir, as training leaves them ---


def plant_run(
    root: Path, cfg: RunConfig, rows: Sequence[dict] = (), summary: dict | None = None
) -> RunDir:
    """cfg's run directory under root: its config, then metric rows and a summary if given."""
    run = RunDir.of(root, cfg)
    run.write_config(cfg)
    if rows:
        run.append_metrics(rows)
    if summary is not None:
        run.write_summary(summary)
    return run
