"""Execute notebooks/02_chinchilla_refit.ipynb with nbclient (~40-60 s: one NUTS compile)."""

from __future__ import annotations

from pathlib import Path

import pytest

NB = Path(__file__).parents[1] / "notebooks" / "02_chinchilla_refit.ipynb"


def test_notebook_02_runs() -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NB, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}}
    )
    client.execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    table = "".join(o.get("data", {}).get("text/plain", "") for o in nb.cells[5]["outputs"])
    assert "Hoffmann 2022" in table and "tokens_per_param" in table
