"""Execute notebooks in place and strip volatile metadata: `python notebooks/execute.py [NAME ...]`.

With no names every notebooks/*.ipynb is run, in order, at its small default setting (the one the
test suite executes); outputs, figures included, are written back so the notebooks read on a
code host. The test suite imports this module (tests/_notebook.py): one harness for both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
# Notebook-level metadata worth keeping; the rest (widget state, kernel versions) is volatile.
KEPT_METADATA = ("kernelspec", "language_info")
KEPT_LANGUAGE_INFO = ("name", "codemirror_mode", "file_extension", "mimetype", "pygments_lexer")
# Cell metadata written by nbclient / Jupyter that changes on every execution.
VOLATILE_CELL_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")


def notebooks() -> list[Path]:
    """Every notebook in notebooks/, in name order."""
    return sorted(HERE.glob("*.ipynb"))


def run(
    path: str | os.PathLike, env: Mapping[str, str] | None = None, timeout: int = 600
) -> nbformat.NotebookNode:
    """Execute every cell with cwd notebooks/ and return the notebook (raises on a cell error)."""
    nb = nbformat.read(Path(path), as_version=4)
    env = dict(env or {})
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(HERE)}},
        ).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    bad = errors(nb)
    if bad:
        raise RuntimeError(f"{path}: error outputs {bad}")
    return nb


def outputs(nb: nbformat.NotebookNode) -> list[dict]:
    """Every output of every code cell."""
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def errors(nb: nbformat.NotebookNode) -> list[str]:
    """`ename: evalue` of every error output."""
    return [
        f"{o.get('ename')}: {o.get('evalue')}"
        for o in outputs(nb)
        if o.get("output_type") == "error"
    ]


def text(nb: nbformat.NotebookNode) -> str:
    """All printed and displayed text, concatenated."""
    return "".join(
        o.get("text", "") or str(o.get("data", {}).get("text/plain", "")) for o in outputs(nb)
    )


def images(nb: nbformat.NotebookNode) -> int:
    """How many PNG outputs the notebook holds."""
    return sum("image/png" in o.get("data", {}) for o in outputs(nb))


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop volatile metadata, number the code cells 1, 2, ... and make paths in printed warnings
    relative to the checkout (in place; returns nb)."""
    meta = {k: nb.metadata[k] for k in KEPT_METADATA if k in nb.metadata}
    if "language_info" in meta:
        li = meta["language_info"]
        meta["language_info"] = {k: li[k] for k in KEPT_LANGUAGE_INFO if k in li}
    nb.metadata = nbformat.from_dict(meta)
    count = 0
    for cell in nb.cells:
        for k in VOLATILE_CELL_METADATA:
            cell.metadata.pop(k, None)
        if cell.cell_type != "code":
            continue
        count += 1
        cell.execution_count = count if cell.get("outputs") is not None else None
        for o in cell.get("outputs", []):
            o.pop("transient", None)
            if o.get("output_type") == "stream":
                # a warning names the file that raised it: keep the warning, drop the checkout
                o["text"] = o["text"].replace(f"{HERE.parent}{os.sep}", "")
            if o.get("output_type") == "execute_result":
                o["execution_count"] = count
    return nb


def volatile(nb: nbformat.NotebookNode, root: Path = HERE.parent) -> list[str]:
    """What in a notebook would change between executions or leak the machine it ran on."""
    out = [f"notebook metadata {k!r}" for k in nb.metadata if k not in KEPT_METADATA]
    li = nb.metadata.get("language_info", {})
    out += [f"language_info {k!r}" for k in li if k not in KEPT_LANGUAGE_INFO]
    expected = 0
    for i, cell in enumerate(nb.cells):
        out += [f"cell {i} metadata {k!r}" for k in VOLATILE_CELL_METADATA if k in cell.metadata]
        if cell.cell_type != "code":
            continue
        expected += 1
        if cell.execution_count != expected:
            out.append(f"cell {i} execution_count {cell.execution_count} (expected {expected})")
    leaks = (str(root), str(Path.home()), "/tmp/", sys.prefix)
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            body = o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
            body += str(o.get("data", {}).get("text/html", ""))
            for p in leaks:
                if p and p in body:
                    k = body.index(p)
                    out.append(
                        f"cell {i} output mentions {p!r}: ...{body[max(0, k - 60) : k + 200]}..."
                    )
    return out


def refresh(path: Path, timeout: int = 1200) -> float:
    """Execute one notebook, strip it and write it back; return the seconds taken."""
    t0 = time.perf_counter()
    nb = strip(run(path, timeout=timeout))
    problems = volatile(nb)
    if problems:
        raise RuntimeError(f"{path.name}: volatile content after stripping: {problems}")
    nbformat.write(nb, path)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Refresh the named notebooks (default: all) and report the time each took."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="notebook file names in notebooks/ (default: all)")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = p.parse_args(argv)
    paths = [HERE / n for n in args.names] if args.names else notebooks()
    failed = []
    for path in paths:
        try:
            secs = refresh(path, args.timeout)
        except Exception as e:  # report it and go on: one broken notebook should not stop the rest
            failed.append(path.name)
            print(f"{path.name}: FAILED, left unchanged: {str(e)[-2000:]}", flush=True)
            continue
        print(f"{path.name}: executed and stripped in {secs:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
