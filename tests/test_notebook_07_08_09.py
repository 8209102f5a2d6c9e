"""Execute notebooks 07 (sample efficiency), 08 (loss by position) and 09 (distribution shift).

They share one real sweep (experiments/efficiency.py tiny, 4 sizes × 300 steps, ~80 s idle):
the first notebook run trains it into a module-wide directory, the others find it finished,
so the three together cost about one sweep plus ~20 s each.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _notebook import execute  # noqa: E402


@pytest.fixture(scope="module")
def sizes(tmp_path_factory) -> dict[str, str]:
    return {"JAXSCALE_NB_RESULTS": str(tmp_path_factory.mktemp("nb") / "sizes-tiny")}


def test_notebook_07_sample_efficiency(sizes):
    text = execute("07_sample_efficiency.ipynb", sizes)
    assert "4 done, 0 diverged, 0 failed" in text
    assert "D_L ∝ N^-gamma with gamma =" in text and "90% interval" in text
    assert "median |error|" in text


def test_notebook_08_loss_by_position(sizes):
    text = execute("08_loss_by_position.ipynb", sizes)
    assert "2048 windows" in text and "L_inf ranges from" in text
    assert "alpha_N =" in text


def test_notebook_09_distribution_shift(sizes):
    text = execute("09_distribution_shift.ipynb", sizes)
    assert "Against stdlib (4 model sizes" in text
    assert "prose: offset c =" in text and "site-packages: offset c =" in text
