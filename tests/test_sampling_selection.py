"""best_of_n / worst_of_n / kth selection over sampled candidates (same compiled shape as test_sampler C2)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infalign_jax.cli import UsageError
from infalign_jax.models import from_pretrained
from infalign_jax.sampling import (
    Sampler,
    SamplingConfig,
    argmin_rule,
    best_of_n,
    kth_rule,
    select,
    select_of_n,
    text_reward_fn,
    worst_of_n,
)

C2 = SamplingConfig(temperature=0.8)
KW = dict(max_new_tokens=16, seed=0, config=C2)


@pytest.fixture(scope="module")
def setup(repo_root):
    model, tokenizer = from_pretrained(repo_root / "tests/fixtures/models/llama")
    g = json.loads((repo_root / "tests/fixtures/models/llama_greedy.json").read_text())
    rows = zip(g["prompt_tokens_bt"], g["prompt_mask_bt"], strict=True)
    prompts = [[t for t, m in zip(r, mr, strict=True) if m] for r, mr in rows]
    return Sampler(model), tokenizer, prompts


@jax.jit
def mean_token_id(prompt_bt, prompt_mask_bt, tokens_bnl, mask_bnl):
    """A jittable reward: mean generated token id (ignores the prompt)."""
    m = mask_bnl.astype(jnp.float32)
    return jnp.sum(tokens_bnl * m, -1) / jnp.maximum(jnp.sum(m, -1), 1.0)


def test_best_and_worst_of_n_with_a_jittable_reward(setup):
    sampler, _, prompts = setup
    best = best_of_n(sampler, prompts, 4, mean_token_id, **KW)
    worst = worst_of_n(sampler, prompts, 4, mean_token_id, **KW)
    cand = best.candidates
    want = (cand.tokens * cand.mask).sum(-1) / cand.mask.sum(-1)
    np.testing.assert_allclose(best.rewards, want, rtol=1e-6)
    np.testing.assert_array_equal(best.index, want.argmax(-1))
    np.testing.assert_array_equal(worst.index, want.argmin(-1))
    assert (best.index != worst.index).all()
    for b in range(2):
        np.testing.assert_array_equal(best.tokens[b], cand.tokens[b, best.index[b]])
        np.testing.assert_array_equal(worst.mask[b], cand.mask[b, worst.index[b]])
        assert best.reward[b] == best.rewards[b].max() and worst.reward[b] == worst.rewards[b].min()
        assert best.length[b] == cand.lengths[b, best.index[b]]
    np.testing.assert_array_equal(worst.candidates.tokens, cand.tokens)  # same seed, same candidates


def test_host_callable_text_reward_and_kth_rule(setup):
    sampler, tokenizer, prompts = setup
    seen = {}

    def score_texts(prompt_texts, responses):
        seen["prompts"], seen["responses"] = prompt_texts, responses
        return [float(len(r)) for r in responses]

    sel = select_of_n(sampler, prompts, 4, text_reward_fn(score_texts, tokenizer), kth_rule(2), **KW)
    # Special tokens (the policy's BOS) are not prompt text; they used to reach score_texts ('<bos>Human:').
    assert seen["prompts"][0] == tokenizer.decode(prompts[0], skip_special_tokens=True)
    assert len(seen["responses"]) == 8
    cand = sel.candidates
    text = lambda b, i: tokenizer.decode(cand.tokens[b, i], skip_special_tokens=True)
    want = np.array([[len(text(b, i)) for i in range(4)] for b in range(2)])
    np.testing.assert_array_equal(sel.rewards, want)
    second = -np.sort(-want, axis=-1)[:, 1:2]  # the 2nd largest value; ties: its lowest index
    np.testing.assert_array_equal(sel.index, np.argmax(want == second, axis=-1))


def test_select_ties_and_bad_rewards(setup):
    sampler, _, prompts = setup
    cand = sampler.sample(prompts, n=4, **KW)
    tied = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    np.testing.assert_array_equal(select(cand, tied).index, [1, 0])
    # kth_rule(N) is argmin_rule, ties included (a stable argsort gave the highest tied index: [3, 3])
    np.testing.assert_array_equal(select(cand, tied, kth_rule(4)).index, [3, 0])
    np.testing.assert_array_equal(
        select(cand, tied, kth_rule(4)).index, select(cand, tied, argmin_rule).index
    )
    np.testing.assert_array_equal(select(cand, tied, kth_rule(3)).index, [0, 0])  # row 0's 3rd largest: 1.0
    with pytest.raises(UsageError, match="shape"):
        select(cand, np.zeros((2, 3)))
    with pytest.raises(UsageError, match="non-finite"):
        select(cand, np.full((2, 4), np.nan))
    with pytest.raises(UsageError, match="needs at least"):
        select(cand, tied, kth_rule(5))
    # Unsigned and bool rewards (e.g. a pass/fail verifier) rank like floats: -r must not wrap around.
    unsigned = np.array([[1, 0, 2, 1], [0, 3, 3, 1]], np.uint8)
    np.testing.assert_array_equal(select(cand, unsigned, kth_rule(1)).index, [2, 1])
    np.testing.assert_array_equal(select(cand, unsigned, kth_rule(4)).index, [1, 0])
    np.testing.assert_array_equal(select(cand, unsigned, kth_rule(1)).reward, [2.0, 3.0])
    passed = np.array([[False, True, False, True], [False, False, False, False]])
    np.testing.assert_array_equal(select(cand, passed, kth_rule(1)).index, [1, 0])


def test_text_reward_fn_passes_prompt_text_without_special_tokens(setup):
    """A BOS-prefixed prompt reached score_texts as '<bos>...' (decoded without skip_special_tokens)."""
    _, tokenizer, _ = setup
    bos = tokenizer.bos_token_id
    assert bos is not None
    body = tokenizer.encode("Human: hi", add_special_tokens=False)
    prompt_bt = np.array([[bos, *body]], np.int32)
    seen = {}

    def score_texts(prompts, responses):
        seen["prompts"] = prompts
        return [0.0] * len(responses)

    tokens_bnl = np.array([[body]], np.int32)
    text_reward_fn(score_texts, tokenizer)(
        prompt_bt, np.ones_like(prompt_bt), tokens_bnl, np.ones_like(tokens_bnl)
    )
    assert seen["prompts"] == [tokenizer.decode(body)] and tokenizer.bos_token not in seen["prompts"][0]
