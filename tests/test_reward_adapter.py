"""The token → text step of the reward adapter (``reward.adapter.decode_rows``): which tokens of each row are
decoded, with which flag, and the refusals. (``make_reward_fn`` end to end: tests/test_reward_model.py.)"""

import numpy as np
import pytest

from infalign_jax.reward.adapter import decode_rows

BOS, EOS, PAD = 1, 2, 0


class _ListTokenizer:
    """decode(ids) -> "a.b.c"; specials (BOS, EOS) dropped only when asked, as HF tokenizers do."""

    def __init__(self):
        self.calls = []

    def decode(self, ids, skip_special_tokens=False):
        self.calls.append((ids, skip_special_tokens))
        return ".".join(str(i) for i in ids if not (skip_special_tokens and i in (BOS, EOS)))


def test_decode_rows_keeps_each_rows_real_tokens_and_skips_specials():
    tok = _ListTokenizer()
    # row 0 left-padded with a BOS, row 1 right-padded and ended by EOS, row 2 empty
    tokens_bt = np.array([[PAD, PAD, BOS, 7, 8], [9, 10, 11, EOS, PAD], [PAD, PAD, PAD, PAD, PAD]], np.int32)
    mask_bt = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]], np.int32)
    assert decode_rows(tok, tokens_bt, mask_bt) == ["7.8", "9.10.11", ""]
    # plain int lists, special tokens skipped: what HF tokenizers' decode expects
    assert tok.calls == [([BOS, 7, 8], True), ([9, 10, 11, EOS], True), ([], True)]
    assert all(type(i) is int for ids, _ in tok.calls for i in ids)


def test_decode_rows_default_mask_is_all_real():
    tokens_bt = np.array([[5, 6], [BOS, 4]], np.int64)
    assert decode_rows(_ListTokenizer(), tokens_bt) == ["5.6", "4"]


@pytest.mark.parametrize(
    "tokens, mask, needle",
    [
        (np.zeros((2, 3, 4), np.int32), None, r"expected \[B, T\] token ids, got shape \(2, 3, 4\)"),
        (np.zeros((2, 3), np.int32), np.ones((2, 4)), r"mask shape \(2, 4\) != tokens shape \(2, 3\)"),
    ],
)
def test_decode_rows_refuses_bad_shapes(tokens, mask, needle):
    with pytest.raises(ValueError, match=needle):
        decode_rows(_ListTokenizer(), tokens, mask)
