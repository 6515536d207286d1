"""Parity of the flax.nnx BERT (all-MiniLM-L6-v2 weights) with transformers/torch golden outputs."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from infalign_jax.reward.bert import load_bert, load_bert_tokenizer, mean_pool

GOLDEN = Path(__file__).parent / "fixtures" / "minilm" / "golden.npz"


@pytest.fixture(scope="module")
def encoder():
    return load_bert()


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN))


@pytest.mark.parametrize("name", ["single", "pair"])
def test_minilm_matches_torch_golden(encoder, golden, name):
    ids, mask, types = (golden[f"{name}_{k}"] for k in ("ids", "mask", "type_ids"))
    hidden = np.asarray(encoder(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)))
    pooled = np.asarray(mean_pool(jnp.asarray(hidden), jnp.asarray(mask)))
    real = mask.astype(bool)
    assert np.max(np.abs(hidden[real] - golden[f"{name}_hidden"][real])) <= 1e-4
    assert np.max(np.abs(pooled - golden[f"{name}_pooled"])) <= 1e-4


def test_tokenizer_matches_golden_ids(golden):
    tok = load_bert_tokenizer()
    enc = tok.encode("This is a test.")
    n = int(golden["single_mask"][0].sum())
    assert enc.ids == golden["single_ids"][0, :n].tolist()


def test_padding_anywhere_equals_packed(encoder, golden):
    """Mask-derived positions make interior padding invisible: insert 3 pad slots after [CLS]."""
    ids, mask, types = golden["pair_ids"], golden["pair_mask"], golden["pair_type_ids"]
    pad = 3
    ids2 = np.concatenate([ids[:, :1], np.zeros((2, pad), np.int32), ids[:, 1:]], 1)
    mask2 = np.concatenate([mask[:, :1], np.zeros((2, pad), np.int32), mask[:, 1:]], 1)
    types2 = np.concatenate([types[:, :1], np.zeros((2, pad), np.int32), types[:, 1:]], 1)
    hidden = encoder(jnp.asarray(ids2), jnp.asarray(mask2), jnp.asarray(types2))
    pooled = np.asarray(mean_pool(hidden, jnp.asarray(mask2)))
    assert np.max(np.abs(pooled - golden["pair_pooled"])) <= 1e-4
