"""Runs: run directories, the run store, results loading, study grids and the study runner."""
