"""Analysis: scaling-law fits and the studies built on them (frontier, critical batch, ...).

Every analysis computes a frozen result object with one shape: ``table()`` (a DataFrame),
``describe()`` (readable text), ``plot(out_dir)`` and ``save(out_dir)`` (both return the paths
written). Runs are read only through jaxscale.runs (RunDir, run_dirs, results.load); figures go
through :mod:`.plotting`; planted data with known answers lives in :mod:`.synthetic`.
"""
