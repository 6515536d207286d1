"""Logit filters and categorical sampling for the sampler (pure, jittable; vocabulary on the last axis).

Everything here works on float32 logits ``[..., V]`` with any leading shape (the sampler uses ``[N, B, V]``).
Excluded tokens get logit ``-inf``, so they have probability exactly 0 and are never drawn.

Design notes (measured on the 2-core CPU machines this project targets, 64 rows x 32k vocab):
- A full sort of the vocabulary (``lax.sort`` / ``lax.top_k`` with k = V) costs ~0.5 s per call on XLA:CPU, so
  top-p never sorts the vocabulary: its threshold is found by bisection on the float bit pattern (exact, 31
  passes). Top-k uses ``lax.top_k`` on block maxima, then on the tokens of the k best blocks
  (:func:`top_k_candidates`) and, combined with top-p, applies the nucleus on the k sorted values.
- ``jax.random.categorical`` draws V Gumbel variates per row (~90 ms per step at 64 x 32k); ``jnp.cumsum``
  over V is ~30 ms. :func:`sample_categorical` instead inverts the CDF with ONE uniform per row and a
  two-level (block) cumsum: ~2 ms, the cost of one ``exp`` pass.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp

from infalign_jax.errors import UsageError

NEG_INF = -jnp.inf


MIN_TEMPERATURE = float(jnp.finfo(jnp.float32).tiny)  # smaller positive temperatures are subnormal in float32


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to turn next-token logits into a token. Hashable: it is a static argument of the jitted sampler.

    temperature: 0 means greedy (argmax); otherwise logits are divided by it.
    top_k: keep the k most likely tokens (0 = off). Ties at the k-th value are all kept.
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1.0 = off), applied
      after temperature and top-k (the order transformers uses).
    min_new_tokens: EOS is suppressed (logit -inf) for generation steps < min_new_tokens.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_new_tokens: int = 0

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UsageError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if 0 < self.temperature < MIN_TEMPERATURE:  # float32 would flush it to 0 (0/0 logits)
            raise UsageError(
                f"temperature must be 0 (greedy) or >= {MIN_TEMPERATURE:.3g} (float32's smallest normal "
                f"number), got {self.temperature}"
            )
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, numbers.Integral) or self.top_k < 0:
            raise UsageError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise UsageError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if int(self.min_new_tokens) != self.min_new_tokens or self.min_new_tokens < 0:
            raise UsageError(f"min_new_tokens must be an integer >= 0, got {self.min_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def apply_temperature(logits_v: jax.Array, temperature: float) -> jax.Array:
    """``(logits − max) / temperature`` (temperature > 0): the same distribution as ``logits / temperature``,
    and finite for any positive temperature — unshifted, a tiny one (e.g. 1e-40) overflows the logits to ±inf
    and the softmax to NaN; shifted, the largest logits stay 0 and the rest go to −inf (greedy-like)."""
    shifted = logits_v - jnp.max(logits_v, -1, keepdims=True)
    return shifted / jnp.asarray(temperature, logits_v.dtype)


def top_k_candidates(logits_v: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k(logits, k)`` (values descending, indices) without running top-k over the whole vocabulary.

    The vocabulary is cut into blocks of ``bs`` tokens. Every top-k token lies in one of the k blocks with the
    largest maxima: a block whose max is beaten by k other block maxima has k tokens strictly above all of its
    own, so none of its tokens is in the top k. So: block maxima (one pass), top-k of the V/bs maxima, top-k
    of the k*bs tokens of those blocks. ~6x less top-k work for V = 8192, k = 50 on XLA:CPU. Values are
    exactly those of ``lax.top_k``; among tied values the indices may differ.
    """
    v = logits_v.shape[-1]
    bs = 1 << max(3, round(math.log2(math.sqrt(v / max(k, 1)))))
    if v % bs or v // bs <= 2 * k:
        return jax.lax.top_k(logits_v, k)
    lead = logits_v.shape[:-1]
    x_cb = logits_v.reshape(*lead, v // bs, bs)
    _, blocks_k = jax.lax.top_k(jnp.max(x_cb, -1), k)
    cand = jnp.take_along_axis(x_cb, blocks_k[..., None], -2).reshape(*lead, k * bs)
    idx = (blocks_k[..., None] * bs + jnp.arange(bs, dtype=blocks_k.dtype)).reshape(*lead, k * bs)
    vals, j = jax.lax.top_k(cand, k)
    return vals, jnp.take_along_axis(idx, j, -1)


def top_k_filter(logits_v: jax.Array, k: int) -> jax.Array:
    """Sets every logit below the k-th largest to -inf (k = 0 or k >= V: unchanged)."""
    if k <= 0 or k >= logits_v.shape[-1]:
        return logits_v
    kth = jnp.min(top_k_candidates(logits_v, k)[0], -1, keepdims=True)  # a reduction: see sample_token
    return jnp.where(logits_v < kth, NEG_INF, logits_v)


def _f32_from_bits(bits):
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def top_p_threshold(probs_v: jax.Array, p: float) -> jax.Array:
    """Largest τ with ``sum(probs[probs >= τ]) >= p`` per row, shape ``[..., 1]``; the nucleus is ``probs >=
    τ``.

    Token i is kept iff the mass of tokens strictly more likely than i is < p — the "smallest set reaching p"
    rule of transformers' TopPLogitsWarper, with ties kept together. Non-negative float32 bit patterns are
    ordered like the values, so bisection over int32 bits finds τ exactly (it is one of the probabilities) in
    31 passes without sorting.
    """
    probs_v = probs_v.astype(jnp.float32)
    target = jnp.asarray(p, jnp.float32)
    lo = jnp.zeros(probs_v.shape[:-1] + (1,), jnp.int32)
    hi = jax.lax.bitcast_convert_type(jnp.max(probs_v, -1, keepdims=True), jnp.int32) + 1
    # lo: bits of 0.0 (mass(>= 0) = 1 >= p); hi: just above the max (mass(>= hi) = 0 < p)

    def body(_, lo_hi):
        lo, hi = lo_hi
        mid = lo + (hi - lo) // 2
        mass = jnp.sum(jnp.where(probs_v >= _f32_from_bits(mid), probs_v, 0.0), -1, keepdims=True)
        ok = mass >= target
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 31, body, (lo, hi))
    return _f32_from_bits(lo)


def top_p_filter(logits_v: jax.Array, p: float) -> jax.Array:
    """Sets logits outside the top-p nucleus of ``softmax(logits)`` to -inf (p >= 1: unchanged)."""
    if p >= 1.0:
        return logits_v
    probs_v = jax.nn.softmax(logits_v, axis=-1)
    keep = (probs_v >= top_p_threshold(probs_v, p)) & (logits_v > NEG_INF)
    return jnp.where(keep, logits_v, NEG_INF)


def filter_logits(logits_v: jax.Array, config: SamplingConfig) -> jax.Array:
    """Temperature, then top-k, then top-p over the full vocabulary: the logits of the sampling distribution.

    Reference semantics of :func:`sample_token` (which computes the same distribution faster). Greedy configs
    (temperature 0) return the logits unchanged.
    """
    if config.greedy:
        return logits_v
    out = apply_temperature(logits_v, config.temperature)
    out = top_k_filter(out, config.top_k)
    return top_p_filter(out, config.top_p)


def _invert_cdf(weights_v: jax.Array, x: jax.Array) -> jax.Array:
    """Index i with ``cdf[i-1] <= x < cdf[i]`` for cdf = cumsum(weights) (small V); weight-0 entries never
    chosen."""
    cdf_v = jnp.cumsum(weights_v, -1)
    x = jnp.minimum(x, jnp.nextafter(cdf_v[..., -1], 0.0))  # x < total, even after rounding of u * total
    return jnp.sum(cdf_v <= x[..., None], -1).astype(jnp.int32)


def sample_categorical(keys: jax.Array, logits_v: jax.Array, block: int | None = None) -> jax.Array:
    """One draw from ``softmax(logits)`` per row by inverse CDF with a single uniform per row.

    keys: typed PRNG keys of shape ``logits.shape[:-1]`` (one per row, so results do not depend on how rows
    are batched or sharded). Two-level CDF: pick a block of ``block`` tokens by the cumsum of block masses,
    then the token inside that block. Tokens with logit -inf have weight 0 and are never returned. Returns
    int32 ``[...]``.
    """
    lead, v = logits_v.shape[:-1], logits_v.shape[-1]
    logits_v = logits_v.astype(jnp.float32)
    w_v = jnp.exp(logits_v - jnp.max(logits_v, -1, keepdims=True))
    u = jax.vmap(jax.random.uniform)(keys.reshape(-1)).reshape(lead)
    if block is None:
        block = 1 << max(4, math.ceil(math.log2(math.sqrt(v))))
    if v <= block:
        return _invert_cdf(w_v, u * jnp.sum(w_v, -1))
    pad = (-v) % block
    w_cb = jnp.pad(w_v, [(0, 0)] * len(lead) + [(0, pad)]).reshape(*lead, -1, block)
    mass_c = jnp.sum(w_cb, -1)
    cum_c = jnp.cumsum(mass_c, -1)
    x = u * cum_c[..., -1]
    c = _invert_cdf(mass_c, x)
    below = jnp.where(c > 0, jnp.take_along_axis(cum_c, jnp.maximum(c - 1, 0)[..., None], -1)[..., 0], 0.0)
    w_b = jnp.take_along_axis(w_cb, c[..., None, None], -2)[..., 0, :]
    return c * block + _invert_cdf(w_b, x - below)


def _log_softmax_at(logits_v: jax.Array, tok: jax.Array) -> jax.Array:
    picked = jnp.take_along_axis(logits_v, tok[..., None], -1)[..., 0]
    return picked - jax.nn.logsumexp(logits_v, -1)


def sample_token(keys: jax.Array, logits_v: jax.Array, config: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """Draws one token per row from the distribution of :func:`filter_logits` and returns ``(token,
    logprob)``.

    ``logprob`` is the log-probability of the token under that sampling distribution (temperature and filters
    applied; 0 for greedy). keys: one typed key per row (``logits.shape[:-1]``). With top-k only the k
    candidates from ``lax.top_k`` are normalized and sampled (top-p then acts on the k sorted values, keeping
    values tied with the last one kept), never the full vocabulary — unless a row has tokens outside the k
    candidates tied with the k-th value (:func:`filter_logits` keeps all of them): such rows take the
    full-vocabulary path (computed for the whole batch, but only in calls that have such a row) and every
    other row keeps its candidate draw, so a row's token never depends on the other rows of the batch (until
    2026-11-27 one tied row switched the whole batch, so a prompt's samples changed with its neighbours). The
    candidates are the top k + 1, so a tie beyond the k shows as the two smallest being equal; they are read
    by reductions and masks only: an extra slice of ``lax.top_k``'s outputs makes XLA:CPU replace its fast
    TopK kernel by a full sort (measured 2 → 9 ms per call for 64 × 8192, k = 50).
    """
    logits_v = logits_v.astype(jnp.float32)
    if config.greedy:
        tok = jnp.argmax(logits_v, -1).astype(jnp.int32)
        return tok, jnp.zeros(tok.shape, jnp.float32)
    scaled_v = apply_temperature(logits_v, config.temperature)

    def full_vocabulary(_):
        filtered_v = top_p_filter(top_k_filter(scaled_v, config.top_k), config.top_p)
        tok = sample_categorical(keys, filtered_v)
        return tok, _log_softmax_at(filtered_v, tok)

    k = config.top_k
    if not 0 < k < logits_v.shape[-1]:
        return full_vocabulary(None)
    vals, idx = top_k_candidates(scaled_v, k + 1)  # sorted, descending

    def candidates(_):
        vals_k = jnp.where(jnp.arange(k + 1) < k, vals, NEG_INF)  # the top k (a mask, not a slice)
        if config.top_p < 1.0:
            probs_k = jax.nn.softmax(vals_k, -1)
            kept = jnp.cumsum(probs_k, -1) - probs_k < config.top_p  # a prefix of the sorted values
            last_kept = jnp.min(jnp.where(kept, vals_k, jnp.inf), -1, keepdims=True)
            vals_k = jnp.where(vals_k >= last_kept, vals_k, NEG_INF)  # ties with the last kept value stay
        j = sample_categorical(keys, vals_k)
        tok = jnp.take_along_axis(idx, j[..., None], -1)[..., 0].astype(jnp.int32)
        return tok, _log_softmax_at(vals_k, j)

    tied_beyond_k = jnp.sum(vals == jnp.min(vals, -1, keepdims=True), -1) >= 2  # value k+1 == value k

    def per_row(_):  # rows choose their own path: tied ones the full vocabulary, the others their candidates
        (full_tok, full_lp), (cand_tok, cand_lp) = full_vocabulary(None), candidates(None)
        return jnp.where(tied_beyond_k, full_tok, cand_tok), jnp.where(tied_beyond_k, full_lp, cand_lp)

    return jax.lax.cond(jnp.any(tied_beyond_k), per_row, candidates, None)


def model_logprob(logits_v: jax.Array, tok: jax.Array) -> jax.Array:
    """``log softmax(logits)[tok]``: the model's own log-probability at temperature 1, no filters (trainer's
    π)."""
    return _log_softmax_at(logits_v.astype(jnp.float32), tok)
