"""Execute notebooks/04_width_vs_depth.ipynb end to end (~40 s idle: one short NUTS fit)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _notebook import execute  # noqa: E402


def test_notebook_04_executes_without_error():
    text = execute("04_width_vs_depth.ipynb", timeout=300)
    assert "4x_wider" in text and "Kaplan et al. 2020" in text and "planted r*" in text
