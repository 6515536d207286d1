"""Logit filters and categorical sampling: exact filter sets vs numpy, chi-square of sampled frequencies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from infalign_jax.cli import UsageError
from infalign_jax.sampling import (
    SamplingConfig,
    filter_logits,
    sample_categorical,
    sample_token,
    top_k_filter,
    top_p_filter,
)
from infalign_jax.sampling.filters import top_k_candidates


def np_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_nucleus(logits, p):
    """Boolean keep-mask of the smallest set of most likely tokens whose mass reaches p (sort-based
    reference)."""
    probs = np_softmax(logits)
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, -1)
    keep_sorted = (np.cumsum(sorted_p, -1) - sorted_p) < p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, -1)
    return keep


def chi_square_pvalue(counts, probs, min_expected=5.0):
    """Pearson chi-square goodness of fit; bins with expected count < min_expected are pooled into one."""
    counts, probs = np.asarray(counts, np.float64), np.asarray(probs, np.float64)
    expected = probs * counts.sum()
    big = expected >= min_expected
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        assert obs[-1] == 0, "tokens of probability 0 were drawn"
        obs, exp = obs[:-1], exp[:-1]
    stat = ((obs - exp) ** 2 / exp).sum()
    return stats.chi2.sf(stat, len(obs) - 1)


def draw(logits_v, config, num, seed=0):
    keys = jax.random.split(jax.random.key(seed), num)
    rows = jnp.broadcast_to(jnp.asarray(logits_v, jnp.float32), (num, len(logits_v)))
    tok, lp = jax.jit(sample_token, static_argnums=2)(keys, rows, config)
    return np.asarray(tok), np.asarray(lp)


@pytest.fixture(scope="module")
def logits():
    return np.asarray(jax.random.normal(jax.random.key(42), (4, 300)) * 2.0)


def test_top_k_filter_keeps_exactly_the_k_largest(logits):
    out = np.asarray(top_k_filter(jnp.asarray(logits), 7))
    for row, filt in zip(logits, out, strict=True):
        kept = np.flatnonzero(np.isfinite(filt))
        np.testing.assert_array_equal(np.sort(kept), np.sort(np.argsort(-row)[:7]))
        np.testing.assert_array_equal(filt[kept], row[kept])
    np.testing.assert_array_equal(np.asarray(top_k_filter(jnp.asarray(logits), 0)), logits)


@pytest.mark.parametrize("shape,k", [((3, 8192), 50), ((2, 4, 4096), 1), ((5, 1000), 7), ((2, 262144), 64)])
def test_top_k_candidates_equal_lax_top_k(shape, k):
    x = jax.random.normal(jax.random.key(k), shape)
    vals, idx = top_k_candidates(x, k)
    want_vals, want_idx = jax.lax.top_k(x, k)
    np.testing.assert_array_equal(vals, want_vals)
    np.testing.assert_array_equal(idx, want_idx)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_filter_matches_sorted_reference(logits, p):
    out = np.asarray(top_p_filter(jnp.asarray(logits), p))
    keep = np_nucleus(logits, p)
    np.testing.assert_array_equal(np.isfinite(out), keep)
    np.testing.assert_array_equal(out[keep], logits[keep])
    assert keep.sum(-1).min() >= 1


def test_config_validation():
    for bad in [
        dict(temperature=-1.0),
        dict(top_k=-2),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(min_new_tokens=-1),
        dict(top_k=5.0),  # passed, then failed inside jit with a TypeError
    ]:
        with pytest.raises(UsageError):
            SamplingConfig(**bad)
    assert SamplingConfig(temperature=0.0).greedy


def test_sample_categorical_two_level_frequencies():
    v = 1000  # > block size: exercises the two-level CDF
    logits = np.array(jax.random.normal(jax.random.key(1), (v,)))
    logits[::7] = -np.inf
    num = 40_000
    keys = jax.random.split(jax.random.key(3), num)
    tok = np.asarray(jax.jit(sample_categorical)(keys, jnp.broadcast_to(jnp.asarray(logits), (num, v))))
    assert np.all(np.isfinite(logits[tok])), "a token with logit -inf was drawn"
    assert chi_square_pvalue(np.bincount(tok, minlength=v), np_softmax(logits)) > 1e-3


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(temperature=1.0),
        SamplingConfig(temperature=0.6),
        SamplingConfig(temperature=1.3, top_k=10),
        SamplingConfig(temperature=0.8, top_p=0.8),
        SamplingConfig(temperature=1.0, top_k=20, top_p=0.7),
    ],
    ids=["t1", "t0.6", "topk", "topp", "topk+topp"],
)
def test_sample_token_frequencies_and_logprobs(logits, config):
    row = logits[0, :60]
    tok, lp = draw(row, config, 20_000)
    ref_logits = np.asarray(filter_logits(jnp.asarray(row), config), np.float64)
    probs = np_softmax(ref_logits)
    assert np.all(probs[tok] > 0), "a filtered-out token was drawn"
    assert chi_square_pvalue(np.bincount(tok, minlength=len(row)), probs) > 1e-3
    np.testing.assert_allclose(lp, np.log(probs[tok]), atol=2e-5)


def test_top_k_top_p_never_emit_excluded_tokens(logits):
    num = 2000
    rows = np.repeat(logits, num // 4, axis=0)
    keys = jax.random.split(jax.random.key(7), num)
    for config in [SamplingConfig(top_k=5), SamplingConfig(top_p=0.3), SamplingConfig(top_k=40, top_p=0.5)]:
        tok, _ = jax.jit(sample_token, static_argnums=2)(keys, jnp.asarray(rows), config)
        tok = np.asarray(tok)
        allowed = np.argsort(-rows, -1)[:, : config.top_k] if config.top_k else None
        ref = np.asarray(filter_logits(jnp.asarray(rows), config))
        assert np.all(np.isfinite(ref[np.arange(num), tok])), config
        if config.top_k:
            assert all(t in a for t, a in zip(tok, allowed, strict=True))
        if config.top_p < 1 and not config.top_k:
            assert np.all(np_nucleus(rows, config.top_p)[np.arange(num), tok])
        assert len(np.unique(tok)) > 1


def test_greedy_is_argmax(logits):
    tok, lp = sample_token(jax.random.split(jax.random.key(0), 4), jnp.asarray(logits), SamplingConfig(0.0))
    np.testing.assert_array_equal(np.asarray(tok), logits.argmax(-1))
    np.testing.assert_array_equal(np.asarray(lp), 0.0)


@pytest.mark.parametrize(
    "config",
    [SamplingConfig(top_k=1), SamplingConfig(top_k=2), SamplingConfig(top_k=10, top_p=0.5)],
    ids=str,
)
def test_sample_token_keeps_ties_like_filter_logits(config):
    """Three tokens tie for the max: filter_logits keeps all three at the k-th value (top-k) and at the
    nucleus boundary (top-p), so sample_token must draw all of them, with log-prob log(1/3)."""
    logits_v = np.full(64, -5.0, np.float32)
    logits_v[[7, 20, 40]] = 2.0
    ref = np.asarray(filter_logits(jnp.asarray(logits_v), config))
    assert set(np.flatnonzero(np.isfinite(ref) & (ref > -1e30))) == {7, 20, 40}
    tok, lp = draw(logits_v, config, 600)
    assert set(np.unique(tok)) == {7, 20, 40}  # P(one missing in 600 draws) < 3·(2/3)^600
    np.testing.assert_allclose(lp, np.log(1 / 3), rtol=1e-6)


def test_tiny_temperature_is_greedy_with_finite_logprobs(logits):
    """(logits − max) / T: at T = 2e-38 (a normal float32) logits / T would overflow to ±inf (NaN softmax);
    below float32's smallest normal number a temperature is refused (XLA flushes it to 0)."""
    keys = jax.random.split(jax.random.key(0), 4)
    with pytest.raises(UsageError, match="smallest normal"):
        SamplingConfig(temperature=1e-40)
    big = logits * 10  # |logits| up to ~60: 60 / 2e-38 overflows float32
    assert not np.isfinite(np.asarray(jnp.asarray(big, jnp.float32) / np.float32(2e-38))).all()
    for config in [SamplingConfig(temperature=2e-38), SamplingConfig(temperature=2e-38, top_k=5)]:
        tok, lp = sample_token(keys, jnp.asarray(big), config)
        np.testing.assert_array_equal(np.asarray(tok), logits.argmax(-1))
        np.testing.assert_array_equal(np.asarray(lp), 0.0)


def test_a_rows_token_does_not_depend_on_the_other_rows():
    """Row B has a token outside its top k tied with the k-th value (so it needs the full-vocabulary path).
    That used to switch EVERY row of the call to that path, which maps the same uniform to another token: a
    prompt's samples changed with its batch neighbours (93% of keys here). Each row now keeps its own path."""
    V, k = 64, 5
    config = SamplingConfig(top_k=k)
    rng = np.random.default_rng(0)
    row_a, row_b = (
        (2 * rng.standard_normal(V)).astype(np.float32),
        (2 * rng.standard_normal(V)).astype(np.float32),
    )
    top = np.sort(row_b)[::-1]
    row_b[row_b == top[k]] = top[k - 1]
    keys = jax.random.split(jax.random.key(0), 300)
    pair = jax.jit(
        jax.vmap(lambda key, other: sample_token(jnp.stack([key, key]), jnp.stack([row_a, other]), config))
    )
    alone = pair(keys, jnp.broadcast_to(row_a, (300, V)))
    mixed = pair(keys, jnp.broadcast_to(row_b, (300, V)))
    np.testing.assert_array_equal(np.asarray(mixed[0][:, 0]), np.asarray(alone[0][:, 0]))
    np.testing.assert_array_equal(np.asarray(mixed[1][:, 0]), np.asarray(alone[1][:, 0]))
    # ... and row B itself draws only tokens that filter_logits keeps (its top k plus the tied one)
    kept = set(np.flatnonzero(np.asarray(filter_logits(jnp.asarray(row_b), config)) > -np.inf))
    assert len(kept) == k + 1 and set(np.unique(np.asarray(mixed[0][:, 1]))) <= kept


# Boundary rows (issue 18): probabilities that are powers of two, so softmax is exact in float32 and the
# cumulative mass lands EXACTLY on p. Random logits never hit that boundary, so a bisection with `mass > p`
# instead of `mass >= p` (which keeps the extra tokens whose preceding mass equals p) passed every other test.
# Each entry: probs, top_k, top_p, the tokens filter_logits must keep (hand-computed from the rule "token i
# is kept iff the mass of tokens strictly more likely than i, after top-k renormalization, is < p").
BOUNDARY_ROWS = {
    "issue-example p=.5": ([0.5, 0.25, 0.25], 0, 0.5, {0}),
    "p=.75 lands after two": ([0.5, 0.25, 0.125, 0.125], 0, 0.75, {0, 1}),
    "p just above .75": ([0.5, 0.25, 0.125, 0.125], 0, 0.76, {0, 1, 2, 3}),  # ties at the cut-off kept
    "tie after exact mass": ([0.5, 0.125, 0.125, 0.125, 0.125], 0, 0.5, {0}),
    "ties at the top-p cut-off": ([0.5, 0.125, 0.125, 0.125, 0.125], 0, 0.625, {0, 1, 2, 3, 4}),
    "all tied": ([0.25, 0.25, 0.25, 0.25], 0, 0.25, {0, 1, 2, 3}),
    # top-k 3 keeps [.25, .125, .125], renormalized [.5, .25, .25]: p = .5 keeps token 0 only
    "top-k then exact p": ([0.25, 0.125, 0.125] + [0.0625] * 8, 3, 0.5, {0}),
    "top-k then ties at p": ([0.25, 0.125, 0.125] + [0.0625] * 8, 3, 0.75, {0, 1, 2}),
    # top-k 4 keeps [.25, .125, .0625, .0625], renormalized [.5, .25, .125, .125]: p = .75 keeps two
    "top-k, p lands on renormalized": ([0.25, 0.125, 0.0625, 0.0625] + [0.03125] * 16, 4, 0.75, {0, 1}),
    "ties at the top-k cut-off": ([0.5, 0.125, 0.125, 0.125, 0.125], 2, 1.0, {0, 1, 2, 3, 4}),
    "ties at top-k cut-off, exact p": ([0.5, 0.125, 0.125, 0.125, 0.125], 2, 0.5, {0}),
    "top-k 1 of a tie": ([0.25, 0.25, 0.25, 0.25], 1, 0.5, {0, 1, 2, 3}),
}


def _boundary_row(probs):
    logits_v = np.log(np.asarray(probs, np.float64)).astype(np.float32)
    return jnp.asarray(logits_v)


@pytest.mark.parametrize("name", list(BOUNDARY_ROWS))
def test_filters_at_the_exact_top_p_boundary(name):
    probs, k, p, want = BOUNDARY_ROWS[name]
    logits_v = _boundary_row(probs)
    # precondition of the test: the float32 probabilities are exactly the intended ones
    np.testing.assert_array_equal(np.asarray(jax.nn.softmax(logits_v)), np.asarray(probs, np.float32))
    kept = np.flatnonzero(np.asarray(filter_logits(logits_v, SamplingConfig(top_k=k, top_p=p))) > -np.inf)
    assert set(kept.tolist()) == want
    if not k:
        assert set(np.flatnonzero(np.asarray(top_p_filter(logits_v, p)) > -np.inf).tolist()) == want


@pytest.mark.parametrize("name", list(BOUNDARY_ROWS))
def test_sample_token_paths_agree_at_the_boundary(name):
    """sample_token (top-k: the k-candidate path; a tie beyond k or top_k = 0: the full-vocabulary path) draws
    exactly the tokens filter_logits keeps, each with log-prob = log of its renormalized probability. The
    expected probabilities are exact powers of two / thirds computed here by hand from the kept set."""
    probs, k, p, want = BOUNDARY_ROWS[name]
    config = SamplingConfig(top_k=k, top_p=p)
    # 32 tokens of vocabulary (so top-k is a real cut, not k >= V): the row, then tokens of probability 0
    logits_v = np.full(32, -np.inf, np.float32)
    logits_v[: len(probs)] = np.asarray(_boundary_row(probs))
    tok, lp = draw(logits_v, config, 400)
    want_lp = np.log(np.asarray(probs) / sum(probs[i] for i in want))
    assert set(np.unique(tok).tolist()) == want  # kept probs >= 1/8: P(one never drawn) < 5 · (7/8)^400
    np.testing.assert_allclose(lp, want_lp[tok], rtol=0, atol=1e-6)
    if k:  # the full-vocabulary path (top_k = 0 on the top-k-masked row) draws the same set, same log-probs
        masked_v = np.asarray(top_k_filter(jnp.asarray(logits_v), k))
        tok_full, lp_full = draw(masked_v, SamplingConfig(top_p=p), 400)
        assert set(np.unique(tok_full).tolist()) == want
        np.testing.assert_allclose(lp_full, want_lp[tok_full], rtol=0, atol=1e-6)
