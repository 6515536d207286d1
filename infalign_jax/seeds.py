"""Run seeds: the one range check and key constructor every entry point uses (same seed → same numbers).

Seeds are integers in [0, 2**32): without x64 JAX keeps only a seed's low 32 bits (so 2**32 would silently
give the samples of 0), and NumPy / grain reject negative seeds deep inside a run. Checking at the start of a
run turns both into one clear :class:`~infalign_jax.errors.UsageError` before anything is written.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from infalign_jax.errors import UsageError

SEED_LIMIT = 2**32


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int if it is an integer in [0, 2**32); anything else (bools, floats, out of range) is a
    UsageError naming ``name``."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"{name} must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def seed_key(seed) -> jax.Array:
    """``jax.random.key(seed)`` for a seed checked by :func:`check_seed`."""
    return jax.random.key(check_seed(seed))


def as_typed_key(key) -> jax.Array:
    """A typed PRNG key from a typed key or legacy raw key data (``jax.random.PRNGKey``: uint32 [2])."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.ndim:
            raise UsageError(f"key must be a single PRNG key, got shape {key.shape}")
        return key
    if key.dtype != jnp.uint32 or key.shape != (2,):
        raise UsageError(f"key must be a typed PRNG key or uint32 key data [2], got {key.dtype}{key.shape}")
    return jax.random.wrap_key_data(key)
