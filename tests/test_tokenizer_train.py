"""Byte-level BPE tokenizer trained on the real HH train split; AutoTokenizer loads the saved
tokenizer.json."""

import pytest

from infalign_jax.cli import UsageError
from infalign_jax.data.hh import build_hh, load_hh
from infalign_jax.tokenizer_train import BOS_ID, EOS_ID, PAD_ID, ROLE_TOKENS, load_tokenizer, main, train_bpe


def test_hh_tokenizer_trains_saves_and_loads_with_auto_tokenizer(hh_dir, tmp_path):
    build_hh(hh_dir, tmp_path / "data")
    main(["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "tok"), "--vocab-size", "1024"])
    tok = load_tokenizer(tmp_path / "tok")  # transformers.AutoTokenizer
    assert tok.is_fast
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    assert len(tok) == 1024
    assert tok.convert_tokens_to_ids(list(ROLE_TOKENS)) == [1022, 1023]
    backend = tok.backend_tokenizer
    for r in list(load_hh("eval", tmp_path / "data"))[:50]:  # held-out text round-trips exactly
        text = r["prompt"] + " " + r["chosen"]
        ids = tok(text)["input_ids"]
        assert ids[0] == BOS_ID and ids == backend.encode(text).ids
        assert ids.count(1023) == text.count(ROLE_TOKENS[1])
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_bad_tokenizer_inputs(tmp_path):
    with pytest.raises(UsageError, match="vocab_size"):
        train_bpe(["a b c"], vocab_size=100)
    with pytest.raises(UsageError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
