"""Execute notebooks/05_flops.ipynb end to end (~15 s: one small train-step compile)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _notebook import execute  # noqa: E402


def test_notebook_05_executes_without_error():
    text = execute("05_flops.ipynb", timeout=120)
    assert "fitted a in N_opt" in text and "XLA / (exact + AdamW)" in text
