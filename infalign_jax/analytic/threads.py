"""Independent analytic solves side by side on the host's CPU cores.

XLA:CPU runs each of the solver's programs on ONE core: their kernels work on ~10³ cells, far too small for
XLA to split across threads, and it does not run two independent loops of one program concurrently either.
Separate jitted calls issued from separate host threads do run concurrently (the call releases the GIL while
XLA computes), so :func:`map_concurrently` spreads independent calls — one per β chain, KL budget or row of a
batch — over a pool with one thread per core. A vmapped batch would instead run its rows in lockstep on one
core, each ``while_loop`` step waiting for the slowest row. Results do not depend on the number of threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import jax

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_IN_WORKER = threading.local()


def cpu_workers() -> int:
    """The number of CPU cores this process may run on (its affinity mask where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=cpu_workers(), thread_name_prefix="infalign-analytic")
        return _POOL


def split_rows() -> bool:
    """True where batches should run as one call per row (CPU with more than one core); accelerators keep
    one vmapped call per batch (their wide kernels want the rows together)."""
    return jax.default_backend() == "cpu" and cpu_workers() > 1


def map_concurrently(fn: Callable, items: Iterable) -> list:
    """``[fn(item) for item in items]`` with the calls spread over the pool's threads (order kept).

    Runs inline — one call after the other in this thread — for a single item, a single core, or when called
    from a pool thread itself (no nested waiting on the same pool). Each call runs under the caller's
    ``jax_enable_x64`` setting (JAX keeps that context per thread). The first exception is re-raised.
    """
    items = list(items)
    if len(items) <= 1 or cpu_workers() == 1 or getattr(_IN_WORKER, "active", False):
        return [fn(item) for item in items]
    x64 = bool(jax.config.jax_enable_x64)

    def call(item):
        _IN_WORKER.active = True
        try:
            with jax.enable_x64(x64):
                return fn(item)
        finally:
            _IN_WORKER.active = False

    futures = [_pool().submit(call, item) for item in items]
    return [future.result() for future in futures]
