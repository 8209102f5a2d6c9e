#!/usr/bin/env bash
# Set up a virtualenv and run the quickstart isoFLOP study (branch form: one trunk per size,
# cooldown branches per budget; docs/branches.md) on the built-in corpus
# (Python's standard-library source): sweep -> frontier -> Bayesian fit -> HTML report.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
.venv/bin/jaxscale study experiments/quickstart_branched.py --results results/quickstart_branched "$@"
