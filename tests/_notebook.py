"""Execute a notebook from notebooks/ with the same harness as notebooks/execute.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
_spec = importlib.util.spec_from_file_location("jaxscale_nb_execute", NOTEBOOKS / "execute.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def execute(name: str, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    """Run every cell (cwd notebooks/); fail on any error; check a figure was shown; return the
    printed text."""
    nb = harness.run(NOTEBOOKS / name, env, timeout)
    assert harness.images(nb) >= 1, f"{name} displayed no figure"
    return harness.text(nb)
