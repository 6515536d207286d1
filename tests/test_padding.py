"""The one padding module: bucket sizes under each overflow rule, batch buckets, padded rows, widening,
the padding-row convention — hand-computed cases."""

import numpy as np
import pytest

from infalign_jax.errors import UsageError
from infalign_jax.padding import bucket_size, pad_rows, pow2_batch, valid_rows, widen


@pytest.mark.parametrize("overflow", ["raise", "clamp", "multiple"])
def test_bucket_size_is_the_smallest_fitting_bucket_whatever_the_rule(overflow):
    buckets = (64, 16, 32)  # any order
    sizes = [bucket_size(n, buckets, overflow=overflow) for n in (0, 1, 16, 17, 32, 33, 64)]
    assert sizes == [16, 16, 16, 32, 32, 64, 64]


def test_bucket_size_past_the_largest_bucket_follows_the_named_rule():
    buckets = (16, 32)
    # multiple: the next multiple of 32 — 96 for 65..96, a size no bucket lists
    sizes = [bucket_size(n, buckets, overflow="multiple") for n in (33, 64, 65, 96, 97)]
    assert sizes == [64, 64, 96, 96, 128]
    assert bucket_size(1000, buckets, overflow="clamp") == 32
    with pytest.raises(UsageError, match="^length 33 exceeds the largest bucket 32$"):
        bucket_size(33, buckets, overflow="raise")
    with pytest.raises(UsageError, match="^prompt of 40 tokens, top 32$"):
        bucket_size(40, buckets, overflow="raise", too_long=lambda n, top: f"prompt of {n} tokens, top {top}")
    with pytest.raises(ValueError, match="overflow must be one of"):
        bucket_size(3, buckets, overflow="grow")
    with pytest.raises(UsageError, match="no buckets"):
        bucket_size(3, (), overflow="clamp")


def test_pow2_batch_rounds_to_a_power_of_two_then_to_the_multiple():
    assert [pow2_batch(n) for n in (1, 2, 3, 4, 5, 8, 9, 1000)] == [1, 2, 4, 4, 8, 8, 16, 1024]
    assert [pow2_batch(n, 4) for n in (1, 2, 3, 5)] == [4, 4, 4, 8]
    assert [pow2_batch(n, 6) for n in (1, 3, 5, 9)] == [6, 6, 12, 18]  # 8 -> 12, 16 -> 18
    assert pow2_batch(2**40 + 1) == 2**41  # exact integer arithmetic, no float log2
    with pytest.raises(ValueError):
        pow2_batch(0)


def test_pad_rows_left_and_right_with_padding_rows():
    seqs = [[5, 6, 7], [8], []]
    values, mask = pad_rows(seqs, 4, 5, side="left", pad_value=-1)
    np.testing.assert_array_equal(
        values,
        [[-1, 5, 6, 7], [-1, -1, -1, 8], [-1, -1, -1, -1], [-1, -1, -1, -1], [-1, -1, -1, -1]],
    )
    np.testing.assert_array_equal(
        mask, [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    )
    assert values.dtype == np.int32 and mask.dtype == np.int32
    values, mask = pad_rows(seqs, 3, side="right", dtype=np.int64)
    np.testing.assert_array_equal(values, [[5, 6, 7], [8, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert values.dtype == np.int64 and values.shape == (3, 3)


def test_pad_rows_refuses_the_first_row_that_does_not_fit():
    with pytest.raises(UsageError, match="^a row of 5 tokens exceeds the padded length 4$"):
        pad_rows([[1], [1] * 5, [1] * 6], 4, side="left")
    with pytest.raises(UsageError, match="^field 'x' has 6 > 4$"):
        pad_rows([[1] * 6], 4, side="right", too_long=lambda n, length: f"field 'x' has {n} > {length}")
    with pytest.raises(ValueError, match="3 sequences do not fit 2 rows"):
        pad_rows([[1], [2], [3]], 4, 2, side="left")
    with pytest.raises(ValueError, match="side must be"):
        pad_rows([[1]], 4, side="middle")


def test_widen_pads_an_already_padded_batch_on_its_side():
    x = np.array([[0, 3], [4, 5]], np.int64)
    np.testing.assert_array_equal(widen(x, 4, side="left"), [[0, 0, 0, 3], [0, 0, 4, 5]])
    got = widen(x, 3, side="right", dtype=np.int32)
    np.testing.assert_array_equal(got, [[0, 3, 0], [4, 5, 0]])
    assert got.dtype == np.int32
    np.testing.assert_array_equal(widen(x, 2, side="left"), x)
    with pytest.raises(ValueError, match="^reward-model tokens of width 2 exceed the fixed width 1$"):
        widen(x, 1, side="right", what="reward-model tokens")


def test_valid_rows_marks_the_leading_real_rows():
    np.testing.assert_array_equal(valid_rows(3, 5), [True, True, True, False, False])
    np.testing.assert_array_equal(valid_rows(0, 2), [False, False])
    with pytest.raises(ValueError):
        valid_rows(3, 2)
