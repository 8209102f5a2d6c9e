"""Committed notebooks carry their outputs (a figure at least) and no volatile metadata; the
harness fails on a cell error (~5 s: one kernel start)."""

import sys
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _notebook import NOTEBOOKS, harness  # noqa: E402

NAMES = [p.name for p in harness.notebooks()]


def test_every_numbered_notebook_is_covered():
    assert [n[:2] for n in NAMES] == [f"{i:02d}" for i in range(1, 10)]


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_outputs_and_no_volatile_metadata(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("outputs") is not None for c in code)
    assert harness.images(nb) >= 1, f"{name}: no figure output; run python notebooks/execute.py"
    assert not harness.errors(nb)
    assert harness.volatile(nb) == []
    assert nb.cells[0].cell_type == "markdown" and nb.cells[-1].cell_type == "markdown"


def test_strip_removes_what_volatile_flags():
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("1", execution_count=7)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}, "widgets": {}},
    )
    nb.cells[0].metadata["execution"] = {"iopub.status.busy": "2026-11-30T14:00:00Z"}
    warning = f"{NOTEBOOKS / 'x.py'}:3: UserWarning: careful\n"
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stderr", text=warning)]
    found = harness.volatile(nb)
    assert any("widgets" in f for f in found) and any("execution" in f for f in found)
    assert any("execution_count 7" in f for f in found) and any("mentions" in f for f in found)
    harness.strip(nb)
    assert harness.volatile(nb) == []
    assert nb.cells[0].outputs[0]["text"] == "notebooks/x.py:3: UserWarning: careful\n"
    nb.cells[0].outputs[0]["text"] = "results in /tmp/pytest-1/x\n"  # not scrubbed: flagged
    assert harness.volatile(nb) == [
        "cell 0 output mentions '/tmp/': ...results in /tmp/pytest-1/x\n..."
    ]


def test_harness_fails_on_a_cell_error(tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    )
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(Exception, match="ValueError"):
        harness.run(path, timeout=60)
