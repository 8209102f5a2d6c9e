"""Execute notebooks/01_quickstart.ipynb on the tiny isoFLOP study (~40 s: 8 runs + NUTS)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _notebook import execute  # noqa: E402


def test_notebook_01_trains_plots_and_fits(tmp_path):
    text = execute("01_quickstart.ipynb", {"JAXSCALE_NB_RESULTS": str(tmp_path / "qs")})
    assert "done, 0 diverged, 0 failed" in text
    assert "N_opt: median" in text and "90% interval" in text
    assert (tmp_path / "qs" / "frontier" / "loss_vs_compute.png").exists()
    assert (tmp_path / "qs" / "fit").is_dir()
