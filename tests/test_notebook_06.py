"""Execute notebooks/06_lr_sensitivity.ipynb (~30-45 s idle: 8 real runs in one vmapped group,
then a Laplace Step Law fit on a planted landscape)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _notebook import execute  # noqa: E402


def test_notebook_06_trains_the_lr_grid_and_fits_the_laws(tmp_path):
    text = execute("06_lr_sensitivity.ipynb", {"JAXSCALE_NB_RESULTS": str(tmp_path / "lr")})
    assert "8 done, 0 diverged, 0 failed" in text
    assert "LR* =" in text and "90% delta-method interval" in text
    assert "LR_STUDY_TINY" in text and "WARNING: extrapolated" in text  # Step Law far off-domain
    assert "intervals cover the planted constants" in text
