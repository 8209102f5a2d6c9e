"""Execute notebooks/02_chinchilla_refit.ipynb (~40-60 s: one NUTS compile)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _notebook import execute  # noqa: E402


def test_notebook_02_runs() -> None:
    text = execute("02_chinchilla_refit.ipynb")
    assert "Hoffmann 2022" in text and "tokens_per_param" in text
