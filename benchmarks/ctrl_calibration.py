"""Calibration kernels: broadcast vs searchsorted (and jnp.searchsorted's methods) over K, and its share of a
step.

    python benchmarks/ctrl_calibration.py [--prompts 16 --samples 1024]

Prints ms per call of u = calibrate(rewards [P, S], sorted ref [P, K]) for each kernel; the baseline for the
ratios is the broadcast kernel measured in the same run. infalign_jax.ctrl.calibration.BROADCAST_MAX_K is set
from this table. Calibration's share of a whole train step is measured by benchmarks/ctrl_step.py.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from infalign_jax.ctrl.calibration import _counts_broadcast


def _timeit(fn, *args, reps=20):
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def _searchsorted(method):
    def counts(r_ps, ref_pk):
        left = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="left", method=method))(ref_pk, r_ps)
        right = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="right", method=method))(ref_pk, r_ps)
        return left, right - left

    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=1024)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    kernels = {
        "broadcast": _counts_broadcast,
        **{f"searchsorted:{m}": _searchsorted(m) for m in ("scan", "scan_unrolled", "sort", "compare_all")},
    }
    print(f"P={args.prompts} S={args.samples}; ms per call (ratio vs broadcast)")
    for k in (1, 4, 8, 16, 64, 256, 1024):
        r = jnp.asarray(rng.standard_normal((args.prompts, args.samples)), jnp.float32)
        ref = jnp.sort(jnp.asarray(rng.standard_normal((args.prompts, k)), jnp.float32), axis=1)
        times = {name: _timeit(jax.jit(fn), r, ref) for name, fn in kernels.items()}
        base = times["broadcast"]
        print(f"K={k:5d} " + "  ".join(f"{n}={t * 1e3:.3f}ms({t / base:.2f}x)" for n, t in times.items()))


if __name__ == "__main__":
    main()
