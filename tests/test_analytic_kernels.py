"""Fast kernels of the analytic solver: the matmul blocked cumsum and the exponential search shared by
best_exponential / exponential_at_kl / identity_at_kl."""

import jax
import jax.numpy as jnp
import numpy as np

from infalign_jax.analytic.objectives import blocked_cumsum
from infalign_jax.analytic.solver import best_exponential, exponential_at_kl


def test_blocked_cumsum_matches_numpy_and_is_monotone():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for m in (16, 1000, 1024, 1025):
            x = rng.random((3, m)) * np.exp(-rng.random((3, m)) * 700)  # masses from 1 down to 1e-304
            x[:, ::7] = 0.0
            out = np.asarray(blocked_cumsum(jnp.asarray(x)))
            np.testing.assert_allclose(out, np.cumsum(x, axis=-1), rtol=1e-14, atol=0)
            assert np.all(np.diff(out, axis=-1) >= 0)


def test_best_exponential_is_reproduced_by_the_fixed_t_path():
    best = best_exponential("won:4", [0.3, 0.8])
    again = exponential_at_kl("won:4", best.t, [0.3, 0.8])
    np.testing.assert_array_equal(again.t, best.t)
    np.testing.assert_allclose(again.win_rate, best.win_rate, atol=1e-12)
    np.testing.assert_allclose(again.beta, best.beta, rtol=1e-10)
