#!/usr/bin/env bash
# Set up a virtualenv with jaxscale and its dev tools, then lint and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# tests/test_report_browser.py loads `jaxscale report` in headless Chromium; install it where apt
# can (root or passwordless sudo). Idempotent; ~70 s the first time on a 2-core machine.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
  if [ -n "${SUDO+set}" ]; then
    echo "installing chromium for the report's browser test" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq >/dev/null && \
           $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
  fi
fi
.venv/bin/ruff check jaxscale tests experiments benchmarks
# Two workers, one test file each at a time (module fixtures train once): most tests are
# dispatch-bound tiny models that leave a core idle. PYTEST_WORKERS=0 runs in one process.
.venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
