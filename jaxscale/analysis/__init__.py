"""Analysis: scaling-law fits and the studies built on them (frontier, critical batch, ...)."""
