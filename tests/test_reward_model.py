"""Reward model: pair layout vs the torch golden, scoring API (shapes, padding invariance, no retrace),
policy-token reward function, save/load, and the decoder backbone on a tiny random decoder."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infalign_jax.cli import UsageError
from infalign_jax.reward.adapter import make_reward_fn
from infalign_jax.reward.nets import DecoderRewardNet
from infalign_jax.reward.scoring import RewardModel, build_reward_model
from infalign_jax.reward.spec import RewardSpec
from infalign_jax.reward.storage import load_reward_model, save_reward_model

sys.path.insert(0, str(Path(__file__).parent))
from two_processes import init_worker, run_workers  # noqa: E402

GOLDEN = Path(__file__).parent / "fixtures" / "minilm" / "golden.npz"
PROMPTS = [
    "\n\nHuman: What's the capital of France?\n\nAssistant:",
    "\n\nHuman: Can you help me steal a car?\n\nAssistant:",
    "\n\nHuman: hi\n\nAssistant:",
]
RESPONSES = [
    "Paris is the capital of France.",
    "No, I won't help with that.",
    "Hello! How can I help you today?",
]


def _byte_bpe(vocab_size: int = 300):
    """A tiny byte-level BPE (exact text round trip) wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(PROMPTS + RESPONSES, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


@pytest.fixture(scope="module")
def rm():
    rm = build_reward_model(RewardSpec(), seed=0)
    net = rm.net
    kernel = net.head.out.kernel
    kernel[...] = jax.random.normal(jax.random.key(1), kernel.shape) * 0.1  # a non-trivial head
    rm.set_net(net)
    return rm


def test_pair_features_match_torch_golden(rm):
    """``pair_mean`` of [CLS] left-padded prompt [SEP] response [SEP] == HF pair encoding (no padding)."""
    golden = np.load(GOLDEN)
    feats = rm.features_texts(PROMPTS[:2], RESPONSES[:2])
    assert feats.shape == (2, 2 * 384)
    np.testing.assert_allclose(feats[:, :384], golden["pair_pooled"], atol=1e-4)


def test_score_texts_shape_determinism_and_padding_invariance(rm):
    r = rm.score_texts(PROMPTS, RESPONSES)
    assert r.shape == (3,) and r.dtype == np.float32 and np.all(np.isfinite(r))
    assert np.ptp(r) > 0  # the head is not degenerate
    np.testing.assert_array_equal(r, rm.score_texts(PROMPTS, RESPONSES))
    # Each pair scored alone (different batch / length buckets) gives the same reward.
    alone = np.concatenate([rm.score_texts([p], [y]) for p, y in zip(PROMPTS, RESPONSES, strict=True)])
    np.testing.assert_allclose(alone, r, atol=1e-5)


def test_score_compiles_once_per_bucket(rm):
    a = rm.encode(PROMPTS, RESPONSES, batch=8)
    b = rm.encode(PROMPTS[::-1], ["Sure.", "Absolutely not, that is illegal.", "Bonjour."], batch=8)
    assert a.prompt_bt.shape == b.prompt_bt.shape and a.response_bl.shape == b.response_bl.shape
    assert a.prompt_bt.dtype == np.int32
    before = rm.trace_count
    ra = rm.score(a.prompt_bt, a.prompt_mask_bt, a.response_bl, a.response_mask_bl)
    after_first = rm.trace_count
    rb = rm.score(b.prompt_bt, b.prompt_mask_bt, b.response_bl, b.response_mask_bl)
    assert rm.trace_count == after_first <= before + 1
    assert ra.shape == rb.shape == (8,)
    assert not np.allclose(np.asarray(ra)[:3], np.asarray(rb)[:3])


def test_prompt_truncated_from_left_response_from_right(rm):
    spec = rm.spec
    long_prompt = "\n\nHuman: " + "blah " * 300 + "final question?\n\nAssistant:"
    enc = rm.encode([long_prompt], ["word " * 300])
    assert enc.prompt_mask_bt.sum() == spec.max_prompt_tokens
    assert enc.response_mask_bl.sum() == spec.max_response_tokens
    last = rm.tokenizer.encode("final question?\n\nAssistant:", add_special_tokens=False).ids
    assert enc.prompt_bt[0, -len(last) :].tolist() == last


def test_make_reward_fn_decodes_policy_tokens(rm):
    tok = _byte_bpe()
    p_ids = [tok.encode(p, add_special_tokens=False) for p in PROMPTS]
    r_ids = [tok.encode(y, add_special_tokens=False) for y in RESPONSES]
    tp, tr = max(map(len, p_ids)), max(map(len, r_ids)) + 2
    p_bt = np.zeros((3, tp), np.int32)
    p_mask = np.zeros((3, tp), np.int32)
    r_bt = np.full((3, tr), tok.eos_token_id, np.int32)
    r_mask = np.zeros((3, tr), np.int32)
    for i, (a, b) in enumerate(zip(p_ids, r_ids, strict=True)):
        p_bt[i, tp - len(a) :], p_mask[i, tp - len(a) :] = a, 1  # left-padded prompt
        r_bt[i, : len(b)], r_mask[i, : len(b)] = b, 1  # right-padded response, EOS fill
    reward_fn = make_reward_fn(rm, tok)
    out = reward_fn(p_bt, r_bt, p_mask, r_mask)
    assert out.shape == (3,) and out.dtype == np.float32
    np.testing.assert_allclose(out, rm.score_texts(PROMPTS, RESPONSES), atol=1e-6)


def test_save_and_load_roundtrip(rm, tmp_path):
    save_reward_model(rm, tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm")
    assert loaded.spec == rm.spec
    np.testing.assert_allclose(
        loaded.score_texts(PROMPTS, RESPONSES), rm.score_texts(PROMPTS, RESPONSES), atol=1e-6
    )
    with pytest.raises(UsageError):
        load_reward_model(tmp_path / "missing")


def test_load_on_two_processes(rm, tmp_path):
    """Each process of a jax.distributed run loads the reward model onto its own device: without an explicit
    sharding Orbax restored onto the saving process's device 0, which process 1 does not have (the HH CTRL run
    could not start under --distributed)."""
    save_reward_model(rm, tmp_path / "rm")
    run_workers(__file__, tmp_path / "rm", tmp_path, timeout=300)
    want = rm.score_texts(PROMPTS, RESPONSES)
    assert np.ptp(want) > 1e-3  # a non-trivial head: restoring zeros would not pass
    for pid in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"scores_{pid}.npy"), want, atol=1e-6)


def test_spec_validation():
    with pytest.raises(UsageError, match="backbone"):
        RewardSpec(backbone="bert")
    with pytest.raises(UsageError, match="features"):
        RewardSpec(features=("cls",))
    with pytest.raises(UsageError, match="decoder_path"):
        RewardSpec(backbone="decoder")
    with pytest.raises(UsageError, match="512"):
        RewardSpec(max_prompt_tokens=400, max_response_tokens=200)


def test_decoder_backbone_tiny_random(tmp_path):
    from infalign_jax.models import ModelConfig, Transformer, save_pretrained
    from infalign_jax.models import transformer as tfm

    tok = _byte_bpe(300)
    cfg = ModelConfig.llama(vocab_size=300, bos_token_id=tok.bos_token_id)
    save_pretrained(Transformer(cfg, rngs=nnx.Rngs(0)), tok, tmp_path / "dec")
    spec = RewardSpec(backbone="decoder", decoder_path=str(tmp_path / "dec"), head_hidden=4)
    rm = build_reward_model(spec, seed=0)
    net = rm.net
    assert isinstance(net, DecoderRewardNet) and isinstance(rm, RewardModel)
    net.head.out.kernel[...] = jnp.ones_like(net.head.out.kernel[...])  # zero-initialized output layer
    rm.set_net(net)
    r = rm.score_texts(PROMPTS, RESPONSES)
    assert r.shape == (3,) and np.all(np.isfinite(r)) and np.ptp(r) > 0
    # Decoded policy replies carry a leading space; the RM is trained on stripped replies and scores them so
    # (make_reward_fn / text_reward_fn used to pass the space through: other byte-level tokens).
    assert " " + RESPONSES[0] != RESPONSES[0] and tok.encode(" " + RESPONSES[0]) != tok.encode(RESPONSES[0])
    np.testing.assert_array_equal(rm.score_texts(PROMPTS, [f" {y}\n" for y in RESPONSES]), r)
    # Feature = final-normed hidden state of the last real token of BOS + prompt + response, unpadded.
    ids = [tok.bos_token_id, *tok.encode(PROMPTS[0] + RESPONSES[0], add_special_tokens=False)]
    params = net.decoder.params()
    h = tfm.hidden_states(cfg, params, jnp.asarray([ids], jnp.int32))
    want = tfm.rms_norm(h[:, -1], params["final_norm"], cfg.rms_norm_eps, cfg.norm_offset)
    got = rm.features_texts(PROMPTS[:1], RESPONSES[:1])
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)
    # Head-only training: the backbone gets no gradient, the head does.
    enc = rm.encode(PROMPTS, RESPONSES)
    batch = [
        jnp.asarray(a) for a in (enc.prompt_bt, enc.prompt_mask_bt, enc.response_bl, enc.response_mask_bl)
    ]
    grads = nnx.grad(lambda m: m(*batch).sum())(net)
    assert float(jnp.abs(grads["decoder"]["embed"][...]).max()) == 0.0
    assert float(jnp.abs(grads["head"]["hidden"]["kernel"][...]).max()) > 0.0
    # A truncated prompt keeps BOS first, then its LAST max_prompt_tokens - 1 tokens.
    short = build_reward_model(
        RewardSpec(backbone="decoder", decoder_path=str(tmp_path / "dec"), max_prompt_tokens=8), seed=0
    )
    enc = short.encode([PROMPTS[1]], RESPONSES[1:2])
    prompt_ids = tok.encode(PROMPTS[1], add_special_tokens=False)
    assert len(prompt_ids) > 8
    assert enc.prompt_bt[0][enc.prompt_mask_bt[0] == 1].tolist() == [tok.bos_token_id, *prompt_ids[-7:]]


def test_trained_filter_selects_top_layers_and_head(rm):
    from infalign_jax.reward.nets import trained_filter
    from infalign_jax.reward.storage import saved_filter

    def selected(spec):
        flat = nnx.to_flat_state(nnx.state(rm.net, trained_filter(spec)))
        return {(p[0], p[2]) if p[0] == "encoder" and p[1] == "layers" else p[:2] for p, _ in flat}

    assert selected(RewardSpec(train_layers=0)) == {("head", "out")}
    top2 = selected(RewardSpec(train_layers=2))
    assert top2 == {("head", "out"), ("encoder", 4), ("encoder", 5)}
    everything = selected(RewardSpec(train_layers=-1))
    assert ("encoder", "word_emb") in everything and ("encoder", 0) in everything
    saved = {p[:2] for p, _ in nnx.to_flat_state(nnx.state(rm.net, saved_filter(RewardSpec())))}
    assert saved == {("head", "out"), ("head", "mean"), ("head", "std")}


if __name__ == "__main__":  # the worker of test_load_on_two_processes
    rm_dir, out = map(Path, init_worker(sys.argv))
    loaded = load_reward_model(rm_dir)
    np.save(out / f"scores_{jax.process_index()}.npy", loaded.score_texts(PROMPTS, RESPONSES))
    jax.distributed.shutdown()
