"""The shared seed check and key constructor (infalign_jax.seeds)."""

import jax
import numpy as np
import pytest

from infalign_jax.cli import UsageError
from infalign_jax.seeds import as_typed_key, check_seed, seed_key


def test_check_seed_accepts_the_32_bit_range_only():
    assert check_seed(0) == 0 and check_seed(2**32 - 1) == 2**32 - 1
    assert check_seed(np.int64(7)) == 7 and type(check_seed(np.int64(7))) is int
    for bad in (-1, 2**32, 2**64, 1.5, "3", None, True):
        with pytest.raises(UsageError, match=r"^my_seed must be an integer in \[0, 2\*\*32\), got "):
            check_seed(bad, "my_seed")


def test_seed_key_equals_jax_key_and_keys_are_typed():
    key = seed_key(2**32 - 1)
    assert np.array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(2**32 - 1)))
    raw = jax.random.PRNGKey(3)
    assert np.array_equal(jax.random.key_data(as_typed_key(raw)), np.asarray(raw))
    assert as_typed_key(key) is key
    with pytest.raises(UsageError, match="single PRNG key"):
        as_typed_key(jax.random.split(key, 2))
    with pytest.raises(UsageError, match="uint32 key data"):
        as_typed_key(np.zeros(3, np.uint32))
