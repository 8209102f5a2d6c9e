"""`python -m benchmarks`: run every benchmark and print the table."""

import sys

from benchmarks.run import main

# Benchmarks run by name: `python -m benchmarks design [--quick]`; anything else goes to run.py.
NAMED = {"design": "benchmarks.bench_design"}

if len(sys.argv) > 1 and sys.argv[1] in NAMED:
    import importlib

    sys.exit(importlib.import_module(NAMED[sys.argv[1]]).main(sys.argv[2:]))
sys.exit(main())
