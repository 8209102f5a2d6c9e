"""Execute notebooks/03_critical_batch.ipynb (~40-70 s: a planted sweep and four NUTS fits).

The real batch sweep inside it is opt-in (JAXSCALE_NB03_TRAIN=1); the slow test runs it too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _notebook import execute  # noqa: E402


def _execute(env: dict[str, str]) -> str:
    return execute("03_critical_batch.ipynb", env)


def test_notebook_03_executes_and_recovers_planted_b_crit():
    text = _execute({"JAXSCALE_NB03_TRAIN": "0"})
    assert "B_crit(L) = B*/L^(1/alpha_B)" in text and "planted B_crit" in text
    # every planted B_crit lies inside its 90% interval (the table's last column)
    rows = [ln for ln in text.splitlines() if ln.strip().startswith(("1.5", "1.6", "1.75", "1.9"))]
    assert len(rows) == 4 and all(ln.split()[-1] == "True" for ln in rows), rows


@pytest.mark.slow
def test_notebook_03_real_sweep():
    text = _execute({"JAXSCALE_NB03_TRAIN": "1"})
    assert "trained" in text and "from 5 runs in" in text
