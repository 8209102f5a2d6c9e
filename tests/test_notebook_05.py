"""Execute notebooks/05_flops.ipynb end to end (~15 s: one small train-step compile)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NB = Path(__file__).resolve().parents[1] / "notebooks" / "05_flops.ipynb"


def test_notebook_05_executes_without_error():
    nb = nbformat.read(NB, as_version=4)
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}}
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
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "fitted a in N_opt" in text and "XLA / (exact + AdamW)" in text
