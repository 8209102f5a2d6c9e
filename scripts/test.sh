#!/usr/bin/env bash
# Set up a virtualenv with jaxscale and its dev tools, then lint and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/ruff check jaxscale tests experiments benchmarks
.venv/bin/python -m pytest -q "$@"
