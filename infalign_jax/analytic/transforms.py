"""Reward transformations Φ(u) of the calibrated reward u ∈ [0, 1] (paper Sec. 3).

The project-wide exponential family is Φ_t(u) = (e^{t·u} − 1)/(e^t − 1): Φ_t(0) = 0, Φ_t(1) = 1, increasing
in u for every t, t → 0 gives the identity. t > 0 up-weights the top quantiles (near-optimal for best-of-N,
paper Sec. 3, Fig. 2 and App. on BoN), t < 0 penalizes the bottom quantiles (worst-of-N).
"""

from __future__ import annotations

import jax.numpy as jnp


def exponential_transform(u, t):
    """Φ_t(u) = (e^{t·u} − 1)/(e^t − 1), elementwise, jittable, broadcasting ``u`` against ``t``.

    Stable for all t: for t > 0 it is evaluated as e^{t(u−1)}·(1 − e^{−tu})/(1 − e^{−t}) (every factor in
    [0, 1]), for t < 0 as expm1(t·u)/expm1(t) (both in (−1, 0]); t = 0 returns u exactly. No overflow at t =
    ±50 (or ±1e4) in float32, and differentiable in u (gradients are finite everywhere, including t = 0).
    """
    u = jnp.asarray(u)
    t = jnp.asarray(t, dtype=jnp.result_type(u.dtype, jnp.float32))
    t_pos = jnp.where(t > 0, t, 1.0)
    t_neg = jnp.where(t < 0, t, -1.0)
    pos = jnp.exp(t_pos * (u - 1.0)) * (-jnp.expm1(-t_pos * u)) / (-jnp.expm1(-t_pos))
    neg = jnp.expm1(t_neg * u) / jnp.expm1(t_neg)
    return jnp.where(t > 0, pos, jnp.where(t < 0, neg, u))
