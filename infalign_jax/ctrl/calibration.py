"""Calibrated reward u = C(x, y) (paper Sec. 4, Alg. 1 "CTRL", step 2).

For a prompt x with K reference rewards r_1..r_K drawn from π_ref(·|x), the calibrated reward of a policy
sample with
reward r is the empirical quantile with ties counted half:

    u(x, y) = ( #{k : r_k < r} + ½ · #{k : r_k = r} ) / K            ∈ [0, 1].

Under π_ref (K → ∞) u ~ Uniform[0, 1]; for a finite K the estimate is unbiased for the exact calibrated reward
P_{z~π_ref}[r(z) < r] + ½ P[r(z) = r].

Everything here is a pure jittable function of arrays over a whole batch: policy rewards ``rewards_ps`` [P,
S] against
sorted reference rewards ``ref_sorted_pk`` [P, K]; sharding follows the leading (prompt) axis of the inputs.

Two equivalent kernels: ``"searchsorted"`` (two binary searches per sample, O(S log K)) and ``"broadcast"``
(compare against all K, O(S·K), vectorizes well for small K). ``"auto"`` picks broadcast for K ≤
``BROADCAST_MAX_K``
(see ``benchmarks/ctrl_calibration.py`` for the measurement behind the threshold).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from infalign_jax.errors import UsageError

BROADCAST_MAX_K = 16
METHODS = ("auto", "searchsorted", "broadcast")


def sort_reference(ref_rewards_pk: jax.Array) -> jax.Array:
    """Sorts reference rewards along K (ascending) — the input format of :func:`calibrate`."""
    return jnp.sort(ref_rewards_pk, axis=-1)


def _counts_broadcast(rewards_ps, ref_sorted_pk):
    r = rewards_ps[:, :, None]
    ref = ref_sorted_pk[:, None, :]
    less = jnp.sum(ref < r, axis=-1, dtype=jnp.int32)
    equal = jnp.sum(ref == r, axis=-1, dtype=jnp.int32)
    return less, equal


def _counts_searchsorted(rewards_ps, ref_sorted_pk):
    left = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="left"))(ref_sorted_pk, rewards_ps)
    right = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="right"))(ref_sorted_pk, rewards_ps)
    return left.astype(jnp.int32), (right - left).astype(jnp.int32)


def calibration_counts(rewards_ps: jax.Array, ref_sorted_pk: jax.Array, method: str = "auto"):
    """Returns (less_ps, equal_ps): #{k: r_k < r} and #{k: r_k = r} per policy sample (int32)."""
    if method not in METHODS:
        raise UsageError(f"unknown calibration method {method!r}; expected one of {METHODS}")
    if rewards_ps.ndim != 2 or ref_sorted_pk.ndim != 2 or rewards_ps.shape[0] != ref_sorted_pk.shape[0]:
        raise UsageError(
            f"calibration needs rewards [P, S] and sorted reference rewards [P, K] with the same P; got "
            f"{rewards_ps.shape} and {ref_sorted_pk.shape}"
        )
    k = ref_sorted_pk.shape[1]
    if k < 1:
        raise UsageError("calibration needs K >= 1 reference rewards per prompt")
    if method == "auto":
        method = "broadcast" if k <= BROADCAST_MAX_K else "searchsorted"
    fn = _counts_broadcast if method == "broadcast" else _counts_searchsorted
    return fn(rewards_ps, ref_sorted_pk)


def calibrate(rewards_ps: jax.Array, ref_sorted_pk: jax.Array, method: str = "auto") -> jax.Array:
    """Calibrated rewards u_ps ∈ [0, 1] of policy rewards [P, S] against sorted reference rewards [P, K].

    Pure and jittable; NaN inputs give NaN-free but meaningless output, so callers on the host use
    :func:`check_finite_rewards` (the trainer checks a finiteness flag computed in the step).
    """
    less, equal = calibration_counts(rewards_ps, ref_sorted_pk, method)
    k = ref_sorted_pk.shape[1]
    return (less.astype(jnp.float32) + 0.5 * equal.astype(jnp.float32)) / k


def check_finite_rewards(name: str, rewards) -> None:
    """Raises UsageError naming ``name`` if any reward is NaN/±Inf (host-side check; syncs)."""
    arr = np.asarray(rewards)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise UsageError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (first at index {idx}: {arr[idx]})"
        )


def calibrate_checked(rewards_ps, ref_pk, method: str = "auto", presorted: bool = False) -> jax.Array:
    """Host-facing :func:`calibrate`: checks finiteness first (clear error), sorts the reference if needed."""
    check_finite_rewards("policy rewards", rewards_ps)
    check_finite_rewards("reference rewards", ref_pk)
    ref = jnp.asarray(ref_pk, jnp.float32)
    if not presorted:
        ref = sort_reference(ref)
    return calibrate(jnp.asarray(rewards_ps, jnp.float32), ref, method)


def reference_median(ref_sorted_pk: jax.Array) -> jax.Array:
    """Per-prompt median [P] of sorted reference rewards (mean of the two middle values for even K)."""
    k = ref_sorted_pk.shape[1]
    lo = ref_sorted_pk[:, (k - 1) // 2]
    hi = ref_sorted_pk[:, k // 2]
    return 0.5 * (lo + hi)
