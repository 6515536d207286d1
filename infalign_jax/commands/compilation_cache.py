"""The persistent XLA compilation cache of a CLI process (``python -m infalign_jax.analytic``, the evaluator,
the HH experiment driver): compiled kernels are reused by every later run, so only the first pays the
compile time."""

from __future__ import annotations

import os
from pathlib import Path


def enable_compilation_cache() -> None:
    """Persistent XLA compilation cache for the CLI process: the solver kernels take seconds to compile on
    CPU and are reused by every later run (same jax version, same grid). Honours ``JAX_COMPILATION_CACHE_DIR``
    (e.g. set by launch/local.sh); otherwise ``$XDG_CACHE_HOME/infalign_jax/jax`` (default ~/.cache/...).
    A directory that cannot be created just leaves the cache off."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = root / "infalign_jax" / "jax"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
