"""Where jaxscale keeps its caches: tokenized corpora and compiled XLA programs."""

from __future__ import annotations

import os
from pathlib import Path

import jax


def cache_dir() -> Path:
    """$JAXSCALE_CACHE, else ~/.cache/jaxscale."""
    env = os.environ.get("JAXSCALE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jaxscale"


def enable_compilation_cache(
    path: str | Path | None = None, min_compile_time_s: float = 0.5
) -> Path:
    """Use JAX's persistent compilation cache (default <cache_dir>/jax), so a rerun, or another
    run of the same shape, loads compiled programs instead of recompiling them."""

    path = Path(path).expanduser() if path is not None else cache_dir() / "jax"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def user_chose_compilation_cache() -> bool:
    """True if the user configured (or disabled) the compilation cache themselves."""

    return bool(
        os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or os.environ.get("JAXSCALE_NO_COMPILE_CACHE")
        or jax.config.jax_compilation_cache_dir
    )
