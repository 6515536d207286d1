"""The grain loader: determinism, epochs, buckets, multi-host sharding, resumption; SFT/prompt encoders."""

import json

import numpy as np
import pytest

from infalign_jax.cli import UsageError
from infalign_jax.data.encoders import assistant_spans, prompt_encoder, sft_encoder
from infalign_jax.data.loader import Loader
from infalign_jax.data.tokenizer import ROLE_TOKENS, train_bpe

N = 23
SOURCE = [{"id": 100 + i, "n": 1 + (7 * i) % 13} for i in range(N)]


def toy_encode(rec):
    return {"tokens": np.arange(1, rec["n"] + 1, dtype=np.int32), "id": np.int64(rec["id"])}


def ids_of(batches):
    return [b["id"][b["valid"]].tolist() for b in batches]


def take(loader, k):
    it = iter(loader)
    return [next(it) for _ in range(k)]


def test_same_seed_same_batches_and_each_epoch_a_permutation():
    a = Loader(
        SOURCE, toy_encode, batch_size=4, seed=7, buckets=(4, 8, 16), num_epochs=3, drop_remainder=False
    )
    b = Loader(
        SOURCE, toy_encode, batch_size=4, seed=7, buckets=(4, 8, 16), num_epochs=3, drop_remainder=False
    )
    ba, bb = list(a), list(b)
    assert len(ba) == 3 * 6 == 3 * a.batches_per_epoch
    for x, y in zip(ba, bb, strict=True):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    epochs = [sum(ids_of(ba[6 * e : 6 * e + 6]), []) for e in range(3)]
    for ep in epochs:
        assert sorted(ep) == [100 + i for i in range(N)]
    assert epochs[0] != epochs[1] != epochs[2]
    other = sum(ids_of(Loader(SOURCE, toy_encode, 4, seed=8, buckets=(16,), num_epochs=1)), [])
    assert other != epochs[0][: len(other)]
    # The final partial batch is padded with invalid rows.
    assert ba[5]["valid"].tolist() == [True, True, True, False]
    assert ba[5]["id"][3] == 0 and not ba[5]["tokens"][3].any()


def test_buckets_pad_to_smallest_fitting_length():
    loader = Loader(SOURCE, toy_encode, batch_size=3, seed=0, buckets=(4, 8, 16), num_epochs=2)
    for batch in loader:
        lengths = batch["tokens"].astype(bool).sum(1)
        want = min(b for b in (4, 8, 16) if b >= lengths.max())
        assert batch["tokens"].shape == (3, want)
        for row, n in zip(batch["tokens"], lengths, strict=True):
            assert row[:n].tolist() == list(range(1, n + 1)) and not row[n:].any()
    left = Loader(SOURCE, toy_encode, batch_size=2, shuffle=False, buckets=(16,), left_pad=("tokens",))
    first = next(iter(left))
    assert first["tokens"][0].tolist() == [0] * 15 + [1]  # SOURCE[0] has n = 1
    with pytest.raises(UsageError, match="largest bucket"):
        next(iter(Loader(SOURCE, toy_encode, batch_size=23, buckets=(4,))))


def test_process_shards_are_disjoint_slices_of_the_global_batch():
    one = take(
        Loader(
            SOURCE, toy_encode, batch_size=6, seed=3, buckets=(4, 8, 16), process_count=1, process_index=0
        ),
        7,
    )
    shards = [
        take(
            Loader(
                SOURCE, toy_encode, batch_size=2, seed=3, buckets=(4, 8, 16), process_count=3, process_index=p
            ),
            7,
        )
        for p in range(3)
    ]
    for step in range(7):
        parts = [shards[p][step] for p in range(3)]
        assert len({p["tokens"].shape for p in parts}) == 1  # all processes agree on the bucket
        for k in one[step]:
            assert np.array_equal(np.concatenate([p[k] for p in parts]), one[step][k])
    with pytest.raises(UsageError):
        Loader(SOURCE, toy_encode, batch_size=2, process_count=2, process_index=2)


@pytest.mark.parametrize("stop", [1, 5, 6, 13])
def test_resume_from_saved_position_yields_exactly_the_remaining_batches(stop):
    kw = dict(batch_size=4, seed=11, buckets=(4, 8, 16), num_epochs=3)
    full = list(Loader(SOURCE, toy_encode, **kw))
    first = Loader(SOURCE, toy_encode, **kw)
    done = take(first, stop)
    saved = json.loads(json.dumps(first.state))  # a checkpoint stores it as JSON
    rest = list(Loader(SOURCE, toy_encode, state=saved, **kw))
    assert len(done) + len(rest) == len(full) == 15
    for x, y in zip(done + rest, full, strict=True):
        assert all(np.array_equal(x[k], y[k]) for k in y)
    with pytest.raises(UsageError, match="bad loader state"):
        Loader(SOURCE, toy_encode, state={"epoch": 0}, **kw)


@pytest.fixture(scope="module")
def tok():
    corpus = [f"\n\nHuman: question {i} about cats?\n\nAssistant: answer {i} is dogs." for i in range(50)]
    return train_bpe(corpus, vocab_size=300, min_frequency=1)


def test_sft_encoder_masks_exactly_the_assistant_turns(tok):
    rec = {
        "id": 0,
        "prompt": "\n\nHuman: hi cats\n\nAssistant: hello dogs\n\nHuman: why?\n\nAssistant:",
        "chosen": "because cats.",
    }
    out = sft_encoder(tok, max_len=64, max_prompt_len=32)(rec)
    t, m = out["tokens"], out["loss_mask"].astype(bool)
    assert t[0] == 1 and t[-1] == 2 and m[-1] and not m[0]
    assert tok.decode(t.tolist()) == rec["prompt"] + " " + rec["chosen"]
    assert tok.decode(t[m].tolist()) == " hello dogs because cats."
    text = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d"
    assert assistant_spans(text) == [(22, 24), (46, 48)]  # 2+6+2 chars, then the 12-char marker
    assert [text[a:b] for a, b in assistant_spans(text)] == [" b", " d"]


def test_role_markers_never_get_loss_even_a_repeated_assistant_marker(tok):
    """A reply that restarts with a second "\\n\\nAssistant:" (real: HH train id 1849): the marker is not a
    target, the text after it still is."""
    rec = {
        "id": 0,
        "prompt": "\n\nHuman: hi cats\n\nAssistant: hello dogs\n\nAssistant: more dogs"
        "\n\nHuman: why?\n\nAssistant:",
        "chosen": "because\n\nAssistant: cats.",
    }
    text = rec["prompt"] + " " + rec["chosen"]
    assert [text[a:b] for a, b in assistant_spans(text)] == [
        " hello dogs",
        " more dogs",
        " because",
        " cats.",
    ]
    out = sft_encoder(tok, max_len=64, max_prompt_len=48)(rec)
    t, m = out["tokens"], out["loss_mask"].astype(bool)
    assert tok.decode(t.tolist()) == text
    role_ids = [tok.token_to_id(r) for r in ROLE_TOKENS]
    assert np.isin(t, role_ids).sum() == 6 and not m[np.isin(t, role_ids)].any()
    assert tok.decode(t[m].tolist()) == " hello dogs more dogs because cats."


def test_sft_encoder_truncates_prompt_left_and_reply_right(tok):
    rec = {"id": 0, "prompt": "\n\nHuman: " + "cats " * 40 + "\n\nAssistant:", "chosen": "dogs " * 60}
    out = sft_encoder(tok, max_len=48, max_prompt_len=16)(rec)
    t, m = out["tokens"], out["loss_mask"]
    assert len(t) == 48 and t[0] == 1 and 2 not in t.tolist()[1:]  # reply cut: no <eos>
    assert tok.decode(t[1:16].tolist()).endswith("cats \n\nAssistant:")
    assert not m[:16].any() and m[16:].all()
    p = prompt_encoder(tok, max_prompt_len=16)(rec)["prompt_tokens"]
    assert np.array_equal(p, t[:16])
