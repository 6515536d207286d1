"""The vmapped sampler on the tiny Llama fixture: parity with transformers' greedy tokens and with the full
forward, sampling frequencies, filters, EOS handling, seeds, jit-cache reuse and 8-device sharding.

Compiles are the cost here, so the tests share a few (config, shape) combinations: C1 greedy n=2 L=16,
C2 temperature 0.8 n=4 L=16 (also used by test_sampling_selection / test_sample_cli), C3 n=2048 L=1,
C4 top-k + top-p + min_new_tokens (L=40: two cache stages), C5 = C2 on an 8-device mesh.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from infalign_jax.cli import UsageError
from infalign_jax.mesh import make_mesh
from infalign_jax.models import from_pretrained
from infalign_jax.sampling import Sampler, SamplingConfig, filter_logits, pad_prompts
from infalign_jax.sampling.sampler import cache_stages

FIXTURES = "tests/fixtures/models"
C2 = SamplingConfig(temperature=0.8)


@pytest.fixture(scope="module")
def llama(repo_root):
    return from_pretrained(repo_root / FIXTURES / "llama")[0]


@pytest.fixture(scope="module")
def golden(repo_root):
    g = json.loads((repo_root / FIXTURES / "llama_greedy.json").read_text())
    rows = zip(g["prompt_tokens_bt"], g["prompt_mask_bt"], strict=True)
    prompts = [[t for t, m in zip(r, mr, strict=True) if m] for r, mr in rows]
    return prompts, np.asarray(g["greedy_new_tokens_bt"])


@pytest.fixture(scope="module")
def c2_out(llama, golden):
    return Sampler(llama).sample(golden[0], n=4, max_new_tokens=16, seed=0, config=C2)


def full_logits(model, sampler, prompts, tokens_bnl):
    """Full-forward logits [B, N, L, V] predicting each generated token (no cache): prompt + generation."""
    prompt_bt, pmask_bt = (x[: len(prompts)] for x in sampler.pad(prompts))
    B, N, L = tokens_bnl.shape
    T = prompt_bt.shape[1]
    seq = np.concatenate([np.repeat(prompt_bt, N, 0), tokens_bnl.reshape(B * N, L)], 1)
    mask = np.concatenate([np.repeat(pmask_bt, N, 0), np.ones((B * N, L), np.int32)], 1)
    logits = jax.jit(lambda s, m: model(s, mask_bt=m))(seq, mask)
    return np.asarray(logits[:, T - 1 : T - 1 + L]).reshape(B, N, L, -1)


def log_softmax_at(logits, tok):
    logits = np.asarray(logits, np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return np.take_along_axis(logits, tok[..., None], -1)[..., 0] - lse


def test_greedy_matches_transformers_generate(llama, golden):
    prompts, want = golden
    out = Sampler(llama).sample(prompts, n=2, max_new_tokens=16, seed=0, config=SamplingConfig(0.0))
    for i in range(2):
        np.testing.assert_array_equal(out.tokens[:, i], want)
    assert out.mask.all() and (out.lengths == 16).all()
    np.testing.assert_array_equal(out.sample_logprobs, 0.0)


def test_eos_stops_sequences_and_masks_the_rest(llama, golden):
    prompts, want = golden  # greedy row 0 first emits 331 at step 8; row 1 at step 0
    out = Sampler(llama, eos_ids=(331,), pad_id=7).sample(
        prompts, n=2, max_new_tokens=16, seed=0, config=SamplingConfig(0.0)
    )
    np.testing.assert_array_equal(out.lengths, [[9, 9], [1, 1]])
    for b, length in enumerate([9, 1]):
        np.testing.assert_array_equal(out.tokens[b, 0, :length], want[b, :length])
        assert (out.tokens[b, :, length:] == 7).all()
        assert out.mask[b, :, :length].all() and not out.mask[b, :, length:].any()
        assert (out.logprobs[b, :, length:] == 0).all() and (out.logprobs[b, :, :length] < 0).all()


def test_cache_decode_equals_full_forward(llama, golden, c2_out):
    prompts = golden[0]
    logits = full_logits(llama, Sampler(llama), prompts, c2_out.tokens)
    np.testing.assert_allclose(c2_out.logprobs, log_softmax_at(logits, c2_out.tokens), atol=2e-5)
    np.testing.assert_allclose(c2_out.sample_logprobs, log_softmax_at(logits / 0.8, c2_out.tokens), atol=2e-5)


def test_samples_differ_and_are_reproducible(llama, golden, c2_out):
    prompts = golden[0]
    sampler = Sampler(llama)
    again = sampler.sample(prompts, n=4, max_new_tokens=16, seed=0, config=C2)
    for a, b in zip(again, c2_out, strict=True):
        np.testing.assert_array_equal(a, b)
    for b in range(2):
        assert len({tuple(t) for t in c2_out.tokens[b]}) == 4, "samples of one prompt coincide"
    other = sampler.sample(prompts, n=4, max_new_tokens=16, seed=1, config=C2)
    assert (other.tokens != c2_out.tokens).mean() > 0.5
    swapped = sampler.sample(prompts[::-1], n=4, max_new_tokens=16, key=jax.random.key(0), config=C2)
    assert (swapped.tokens[0] != c2_out.tokens[1]).any(), "prompt keys follow batch position"


def test_new_prompts_reuse_the_compiled_sampler(llama, golden, c2_out):
    sampler = Sampler(llama)
    before = sampler.trace_count
    for seed, prompts in enumerate([[[5, 6, 7], [8] * 13], [[1] * 16, [9, 9]], golden[0]]):
        sampler.sample(prompts, n=4, max_new_tokens=16, seed=seed, config=C2)
    assert sampler.trace_count == before
    tokens, mask = pad_prompts([[1, 2, 3], [4] * 17, [5]], pad_id=0)
    assert tokens.shape == (4, 32) and mask[3].tolist() == [0] * 31 + [1]
    assert tokens[1].tolist() == [0] * 15 + [4] * 17


def test_next_token_frequencies_match_softmax(llama, golden):
    prompts = golden[0]
    sampler = Sampler(llama)
    out = sampler.sample(prompts, n=2048, max_new_tokens=1, seed=3, config=C2)
    logits = full_logits(llama, sampler, prompts, out.tokens[:, :1, :1])[:, 0, 0].astype(np.float64)
    for b in range(2):
        p = np.exp(logits[b] / 0.8 - logits[b].max() / 0.8)
        p /= p.sum()
        counts = np.bincount(out.tokens[b, :, 0], minlength=len(p))
        expected = p * counts.sum()
        big = expected >= 5
        obs = np.append(counts[big], counts[~big].sum())
        exp = np.append(expected[big], expected[~big].sum())
        pvalue = stats.chi2.sf(((obs - exp) ** 2 / exp).sum(), len(obs) - 1)
        assert pvalue > 1e-3, (b, pvalue)


def test_top_k_top_p_min_new_tokens(llama, golden):
    prompts = golden[0]
    config = SamplingConfig(temperature=1.0, top_k=20, top_p=0.8, min_new_tokens=4)
    first = full_logits(llama, Sampler(llama), prompts, np.zeros((2, 1, 1), np.int32))[:, 0, 0]
    eos = (int(np.argmax(first[0])), int(np.argmax(first[1])))
    sampler = Sampler(llama, eos_ids=eos)
    out = sampler.sample(prompts, n=4, max_new_tokens=40, seed=5, config=config)
    assert not np.isin(out.tokens[:, :, :4], eos).any(), "EOS emitted before min_new_tokens"
    assert (out.lengths < 40).any(), "no sequence hit EOS: the test would not check early stopping"
    assert (out.lengths > 33).any(), "no sequence crossed the first cache stage (32 slots)"
    logits = full_logits(llama, sampler, prompts, out.tokens)
    suppress = (np.arange(40) < 4)[:, None] & np.isin(np.arange(logits.shape[-1]), eos)[None]
    filtered = np.asarray(filter_logits(jnp.asarray(np.where(suppress, -np.inf, logits)), config))
    m = out.mask
    picked = np.take_along_axis(filtered, out.tokens[..., None], -1)[..., 0]
    assert np.isfinite(picked[m]).all(), "a token outside top-k / top-p was emitted"
    np.testing.assert_allclose(out.sample_logprobs[m], log_softmax_at(filtered, out.tokens)[m], atol=2e-5)
    np.testing.assert_allclose(out.logprobs[m], log_softmax_at(logits, out.tokens)[m], atol=2e-5)
    for b in range(2):
        for i in range(4):
            L = out.lengths[b, i]
            ends = np.flatnonzero(np.isin(out.tokens[b, i, :L], eos))
            assert (ends.size == 0 and L == 40) or ends.tolist() == [L - 1]


def test_sharded_sampling_equals_single_device(llama, golden, c2_out):
    assert jax.device_count() == 8
    sharded = Sampler(llama, mesh=make_mesh(8)).sample(golden[0], n=4, max_new_tokens=16, seed=0, config=C2)
    np.testing.assert_array_equal(sharded.tokens, c2_out.tokens)
    np.testing.assert_array_equal(sharded.mask, c2_out.mask)
    np.testing.assert_allclose(sharded.logprobs, c2_out.logprobs, atol=1e-5)
    np.testing.assert_allclose(sharded.sample_logprobs, c2_out.sample_logprobs, atol=1e-5)


def test_cache_stages():
    assert cache_stages(1) == [1] and cache_stages(32) == [32] and cache_stages(40) == [32, 40]
    assert cache_stages(200) == [32, 64, 128, 200]


def test_bad_arguments(llama):
    sampler = Sampler(llama)
    with pytest.raises(UsageError, match="exactly one"):
        sampler.sample([[1]], n=2, max_new_tokens=4)
    with pytest.raises(UsageError, match="n must"):
        sampler.sample([[1]], n=0, max_new_tokens=4, seed=0)
    with pytest.raises(UsageError, match="no tokens"):
        sampler.sample([[1], []], n=2, max_new_tokens=4, seed=0)
    with pytest.raises(UsageError, match="largest length bucket"):
        Sampler(llama, length_buckets=(8,)).sample([[1] * 9], n=2, max_new_tokens=4, seed=0)
    with pytest.raises(UsageError, match="eos_ids"):
        Sampler(llama, eos_ids=range(9))
    # Ids outside the vocabulary: jnp.take clamped 600 (NaN log-probs, tokens 0) and wrapped -3 to 509.
    for bad in (600, 512, -3):
        with pytest.raises(UsageError, match=rf"id\(s\) \[{bad}\] outside the model's vocabulary \[0, 512\)"):
            sampler.sample([[1, 2], [bad]], n=2, max_new_tokens=4, seed=0)
    for seed in (-1, 2**32, 2**64, 1.5, True):  # JAX keeps a seed's low 32 bits: 2**32 would equal seed 0
        with pytest.raises(UsageError, match="seed must be an integer"):
            sampler.sample([[1]], n=2, max_new_tokens=4, seed=seed)
    # Positions: the real prompt length counts, not its bucket (the fixture has 128 positions).
    with pytest.raises(UsageError, match="prompt of 29 tokens . max_new_tokens 100 exceeds"):
        sampler.sample([[1] * 29], n=2, max_new_tokens=100, seed=0)


def test_long_bucket_and_raw_key(llama, golden, c2_out):
    """A 20-token prompt (bucket 32) may generate 108 tokens on a 128-position model, and a legacy raw key
    (jax.random.PRNGKey) gives the samples of the same seed."""
    out = Sampler(llama).sample([[1] * 20], n=1, max_new_tokens=108, seed=0, config=SamplingConfig(0.0))
    assert out.tokens.shape == (1, 1, 108)
    raw = Sampler(llama).sample(golden[0], n=4, max_new_tokens=16, key=jax.random.PRNGKey(0), config=C2)
    np.testing.assert_array_equal(raw.tokens, c2_out.tokens)


def test_batch_padding_rows_start_finished(llama):
    """generate(live_b=...): a padding row is finished from step 0 (pad tokens, mask False after its first
    token), so it cannot keep the decode loop running once the real rows have ended."""
    from infalign_jax.sampling import generate

    tokens, mask = pad_prompts([[1, 5, 9], [1, 7]], batch_multiple=4)
    keys = jax.random.split(jax.random.key(0), 4)
    live = np.array([True, True, False, False])
    out = jax.jit(
        lambda t, m, k: generate(llama, t, m, k, n=2, max_new_tokens=6, config=C2, pad_id=0, live_b=live)
    )(tokens, mask, keys)
    assert not np.asarray(out.mask)[2:, :, 1:].any() and not np.asarray(out.tokens)[2:, :, 1:].any()
    assert np.asarray(out.mask)[:2].all()  # no EOS: the real rows run all 6 steps
