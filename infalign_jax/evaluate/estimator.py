"""Exact inference-time win rate of a policy over π_ref from M samples per prompt (paper Sec. 3, Eq. of the
inference-time win rate W(T(π) ≻ T(π_ref)); Sec. 5 evaluation).

A procedure T that draws N responses and keeps the K-th lowest reward (``bon:N`` = K = N, ``won:N`` = K = 1,
``kth:K,N``, ``standard`` = one draw) is applied to each side's M samples of a prompt, the N draws taken
uniformly WITHOUT replacement. The value it selects is then a discrete random variable over the side's
sorted samples r_(1) ≤ … ≤ r_(M): the K-th lowest of a random N-subset sits at sorted position j with
probability

    w_j = C(j − 1, K − 1) · C(M − j, N − K) / C(M, N)            (j = 1 … M)

(the K − 1 lower members come from the j − 1 below, the N − K higher ones from the M − j above). Rewards tied
within a side are no problem: the selected VALUE is the same under any tie-breaking order, so the value's
distribution is the sum of the weights of the tied positions. The per-prompt win rate is then

    W = P(X > Y) + ½ P(X = Y) = Σ_i a_i [B(< x_i) + ½ B(= x_i)]

with X ~ (policy samples, weights a), Y ~ (reference samples, weights b) independent and B the reference
CDF, found by a sorted merge (``searchsorted``). It is the U-statistic of the pair (T on an N-subset of the
policy samples, T on an N-subset of the reference samples) averaged over ALL such pairs: unbiased for the
true W(T(π) ≻ T(π_ref)) and computed exactly, not by resampling. For ``standard`` it is the pairwise
Mann-Whitney statistic (1/(M·M')) Σ_ij [x_i > y_j] + ½ [x_i = y_j].

The weights are exact rationals (Python integers) rounded once to float64, so numpy input gives float64
results exact to rounding; jax input is traced (jit the function with ``procedure`` static) and computed in
the input's floating dtype.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from math import comb

import jax
import jax.numpy as jnp
import numpy as np

from infalign_jax.analytic.procedures import parse_procedure
from infalign_jax.errors import UsageError

STANDARD = "standard"
PROCEDURE_HELP = "standard, bon:N, won:N or kth:K,N (K counted from the lowest reward)"


def parse_selection(spec: str) -> tuple[int, int]:
    """``(k, n)``: the procedure keeps the k-th LOWEST reward of n draws. Accepts ``standard`` (=
    ``identity``, one draw), ``bon:N``, ``won:N`` and ``kth:K,N``; anything else (``rejection:``, N < 1,
    K outside [1, N], garbage) is one :class:`UsageError`. Parsed by
    :func:`infalign_jax.analytic.procedures.parse_procedure` (the analytic solver's specs)."""
    if not isinstance(spec, str):
        raise UsageError(f"procedure must be a string ({PROCEDURE_HELP}), got {type(spec).__name__}")
    return _parse_selection(spec)


@functools.lru_cache(maxsize=256)
def _parse_selection(spec: str) -> tuple[int, int]:
    kind, _, args = canonical_procedure(spec).partition(":")
    if kind == STANDARD:
        return 1, 1
    if kind == "bon":
        return int(args), int(args)
    if kind == "won":
        return 1, int(args)
    if kind == "kth":
        k, n = (int(a) for a in args.split(","))
        return k, n
    raise UsageError(f"procedure {spec!r} is not a selection of one of N draws; expected {PROCEDURE_HELP}")


def canonical_procedure(spec: str) -> str:
    """The canonical name of a spec (``standard``, ``bon:N``, ``won:N``, ``kth:K,N``, or the analytic
    parser's name of another procedure); a spec the parser rejects is a UsageError."""
    if not isinstance(spec, str):
        raise UsageError(f"procedure must be a string ({PROCEDURE_HELP}), got {type(spec).__name__}")
    if spec.strip().lower() in (STANDARD, "identity"):
        return STANDARD
    try:
        return parse_procedure(spec).spec
    except UsageError as e:
        raise UsageError(f"bad procedure {spec!r} ({e}); expected {PROCEDURE_HELP}") from None


@functools.lru_cache(maxsize=256)
def _weights_tuple(m: int, k: int, n: int) -> tuple[float, ...]:
    total = comb(m, n)
    return tuple(float(Fraction(comb(j - 1, k - 1) * comb(m - j, n - k), total)) for j in range(1, m + 1))


def selection_weights(m: int, procedure: str) -> np.ndarray:
    """float64 [M]: the probability that the procedure, run on a uniformly random N-subset of M sorted
    samples, selects sorted position j (ascending). Exact integers, rounded once; sums to 1."""
    k, n = parse_selection(procedure)
    if isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1:
        raise UsageError(f"the number of samples M must be a positive integer, got {m!r}")
    if n > m:
        raise UsageError(f"procedure {procedure!r} draws N={n} of M={m} samples: needs N <= M")
    return np.asarray(_weights_tuple(int(m), k, n), np.float64)


def _check_shapes(x_pm, y_pm, procedure: str) -> None:
    if x_pm.ndim != 2 or y_pm.ndim != 2:
        raise UsageError(
            f"rewards must be [P, M] arrays, got policy {tuple(x_pm.shape)} and reference {tuple(y_pm.shape)}"
        )
    if x_pm.shape[0] != y_pm.shape[0]:
        raise UsageError(
            f"policy rewards cover {x_pm.shape[0]} prompts but reference rewards {y_pm.shape[0]}"
        )
    _, n = parse_selection(procedure)
    for side, arr in (("policy", x_pm), ("reference", y_pm)):
        if arr.shape[1] < n:
            raise UsageError(
                f"procedure {procedure!r} draws N={n} but the {side} has only M={arr.shape[1]} samples "
                "per prompt"
            )


def inference_win_rate(policy_rewards_pm, reference_rewards_pm, procedure: str):
    """Per-prompt win rate [P] of T(π) over T(π_ref): P(X > Y) + ½ P(X = Y), X (Y) the reward T selects from
    a uniformly random N-subset (without replacement) of the policy's (reference's) M (M') samples of the
    prompt — exact, from the order-statistic weights of :func:`selection_weights` (module docstring).

    ``policy_rewards_pm`` [P, M], ``reference_rewards_pm`` [P, M'] (M and M' may differ, both >= N);
    ``procedure``: ``standard``, ``bon:N``, ``won:N`` or ``kth:K,N``. NumPy input: float64 numpy output
    (non-finite rewards are a UsageError). JAX input (or under ``jax.jit`` with ``procedure`` static): a jax
    array in the input's floating dtype.
    """
    is_numpy = not any(isinstance(a, jax.Array) for a in (policy_rewards_pm, reference_rewards_pm))
    if is_numpy:
        x_pm = np.asarray(policy_rewards_pm, np.float64)
        y_pm = np.asarray(reference_rewards_pm, np.float64)
        _check_shapes(x_pm, y_pm, procedure)
        if not (np.isfinite(x_pm).all() and np.isfinite(y_pm).all()):
            raise UsageError("rewards must be finite (found NaN or inf)")
        return _win_rate(x_pm, y_pm, procedure, np)
    x_pm, y_pm = jnp.asarray(policy_rewards_pm), jnp.asarray(reference_rewards_pm)
    _check_shapes(x_pm, y_pm, procedure)
    dtype = jnp.result_type(x_pm.dtype, y_pm.dtype, jnp.float32)
    return _win_rate(x_pm.astype(dtype), y_pm.astype(dtype), procedure, jnp)


def _win_rate(x_pm, y_pm, procedure: str, xp):
    a_m = xp.asarray(selection_weights(x_pm.shape[1], procedure), x_pm.dtype)
    b_m = selection_weights(y_pm.shape[1], procedure)
    cdf = xp.asarray(np.concatenate([[0.0], np.cumsum(b_m)]), x_pm.dtype)  # B(< y_(j+1)) at index j
    x_pm, y_pm = xp.sort(x_pm, axis=1), xp.sort(y_pm, axis=1)
    if xp is np:
        if x_pm.shape[0] == 0:
            return np.zeros((0,), np.float64)
        below = np.stack([np.searchsorted(y, x, side="left") for x, y in zip(x_pm, y_pm, strict=True)])
        upto = np.stack([np.searchsorted(y, x, side="right") for x, y in zip(x_pm, y_pm, strict=True)])
        below = below.reshape(x_pm.shape)
        upto = upto.reshape(x_pm.shape)
    else:
        search = jax.vmap(lambda y, x, side: jnp.searchsorted(y, x, side=side), in_axes=(0, 0, None))
        below, upto = search(y_pm, x_pm, "left"), search(y_pm, x_pm, "right")
    less, equal = cdf[below], cdf[upto] - cdf[below]
    return xp.sum(a_m * (less + 0.5 * equal), axis=1)
