"""The vmapped best-of-N sampler: one jitted prefill per prompt, N samples decode against the shared cache.

Structure of one call (all inside a single ``jax.jit``):

1. ``model.prefill`` runs ONCE on the ``[B, T]`` left-padded prompts and returns the next-token logits and the
   prompt KV cache ``[B, Hkv, T, D]`` per layer.
2. The N samples of a prompt share that cache: ``model.decode_step`` is ``jax.vmap``-ed over samples with
   ``in_axes=None`` for the prompt cache (broadcast inside the attention dot, never copied N times); the
   per-sample tokens ``[N, B]`` and per-sample caches (per layer ``[N, B, Hkv, M, D]``) are mapped over N.
3. A ``lax.while_loop`` decodes one token per step, updating the per-sample cache and the ``[L, N, B]``
   outputs in place (``dynamic_update_slice`` on loop-carried buffers), and stops early once every sequence
   has emitted EOS. The per-sample cache grows in doubling stages (:func:`cache_stages`), one loop each.

Randomness is per (prompt, sample, step): ``fold_in(fold_in(key_b, n), step)`` with one uniform per row (see
:func:`~infalign_jax.sampling.filters.sample_categorical`), so samples do not depend on batch position, bucket
padding or how the batch is sharded — 8-device sampling equals 1-device sampling for the same keys.

:class:`Sampler` is the host API: pads prompts to fixed length/batch buckets (new prompts of a known bucket
never recompile; ``trace_count`` counts traces), shards the prompt batch over the mesh's ``'data'`` axis and
returns numpy. :func:`generate` is the pure function, for callers that jit it inside their own step (e.g. the
CTRL trainer).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from infalign_jax import padding
from infalign_jax.errors import UsageError
from infalign_jax.mesh import DATA, data_sharding
from infalign_jax.sampling.filters import NEG_INF, SamplingConfig, model_logprob, sample_token
from infalign_jax.seeds import as_typed_key, seed_key

DEFAULT_LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class SampleOutput(NamedTuple):
    """N sampled continuations per prompt. ``B`` prompts, ``N`` samples, ``L = max_new_tokens``.

    tokens: int32 [B, N, L]; ``pad_id`` after the end of each sequence.
    mask: bool [B, N, L]; True for generated tokens, up to and including the first EOS.
    lengths: int32 [B, N]; ``mask.sum(-1)``.
    logprobs: float32 [B, N, L]; the MODEL's log-probability of each token at temperature 1 without filters,
      ``log softmax(logits)[y_t]`` — the log π(y_t | x, y_<t) a policy-gradient trainer needs. 0 where mask is
      False.
    sample_logprobs: float32 [B, N, L]; log-probability under the distribution actually sampled from
      (temperature, top-k, top-p and EOS suppression applied); 0 for greedy and where mask is False.
    """

    tokens: jax.Array
    mask: jax.Array
    lengths: jax.Array
    logprobs: jax.Array
    sample_logprobs: jax.Array


def _row_keys(keys_b: jax.Array, n: int, step) -> jax.Array:
    """Typed keys [N, B] for one generation step: fold_in(fold_in(key_b, sample), step)."""
    keys_nb = jax.vmap(lambda i: jax.vmap(lambda k: jax.random.fold_in(k, i))(keys_b))(jnp.arange(n))
    return jax.vmap(jax.vmap(lambda k: jax.random.fold_in(k, step)))(keys_nb)


FIRST_CACHE_STAGE = 32


def cache_stages(max_new_tokens: int) -> list[int]:
    """Per-sample cache sizes of the decode stages: 32, 64, 128, ... capped at ``max_new_tokens``.

    ``decode_step`` attends over every slot of the per-sample cache (masked), so its cost grows with the
    cache size; growing the cache in doubling stages (a new ``lax.while_loop`` per stage, the filled slots
    copied into a larger zero cache) attends over ~2/3 of the slots on average instead of all of them.
    """
    sizes = [min(FIRST_CACHE_STAGE, max_new_tokens)]
    while sizes[-1] < max_new_tokens:
        sizes.append(min(2 * sizes[-1], max_new_tokens))
    return sizes


def generate(
    model,
    prompt_bt: jax.Array,
    prompt_mask_bt: jax.Array,
    keys_b: jax.Array,
    *,
    n: int,
    max_new_tokens: int,
    config: SamplingConfig = SamplingConfig(),
    eos_ids=(),
    pad_id=0,
    batch_sharding: NamedSharding | None = None,
    live_b: jax.Array | None = None,
) -> SampleOutput:
    """Samples ``n`` continuations of each of the B left-padded prompts (pure; call it under ``jax.jit``).

    model: a :mod:`infalign_jax.models` Transformer (``prefill`` / ``init_sample_cache`` / ``decode_step``).
      ``init_sample_cache(B, m)`` is called with the stage sizes m <= max_new_tokens of :func:`cache_stages`;
      ``decode_step`` must accept such caches (it writes slot ``step`` < m and masks slots >= step).
    prompt_bt, prompt_mask_bt: int32 [B, T] left-padded prompts and mask (1 = real token; >= 1 per row).
    keys_b: typed PRNG keys [B], one per prompt (e.g. ``jax.random.split``); greedy ignores them.
    eos_ids: int32 [E] tokens that end a sequence (may be traced; entries < 0 never match); ``()`` disables
      early stopping. pad_id: token written after the end (may be traced).
    batch_sharding: optional sharding of [B]-leading inputs; the [L, N, B] loop buffers are constrained to
      shard their B axis the same way.
    live_b: optional bool [B], False for batch-padding rows: they start finished, so they never keep the loop
      running after every real sequence has ended (their outputs are meaningless; callers drop them).

    Positions are not checked against the model's ``max_position_embeddings`` here (the real prompt lengths
    are traced); :meth:`Sampler.sample` checks them on the host.
    """
    if max_new_tokens < 1 or n < 1:
        raise UsageError(f"need n >= 1 and max_new_tokens >= 1, got n={n}, max_new_tokens={max_new_tokens}")
    L, B = max_new_tokens, prompt_bt.shape[0]
    eos_e = jnp.asarray(eos_ids, jnp.int32).reshape(-1)

    def constrain(x, axis):  # shard the prompt-batch axis of loop buffers like the inputs
        if batch_sharding is None:
            return x
        spec = [None] * x.ndim
        spec[axis] = DATA
        return jax.lax.with_sharding_constraint(x, NamedSharding(batch_sharding.mesh, PartitionSpec(*spec)))

    def pick(step, logits_nbv):
        """(token, model logprob, sampling logprob) [N, B] from the logits of generation step ``step``."""
        sample_logits = logits_nbv
        if config.min_new_tokens > 0 and eos_e.size:
            suppress = (step < config.min_new_tokens) & jnp.isin(jnp.arange(logits_nbv.shape[-1]), eos_e)
            sample_logits = jnp.where(suppress, NEG_INF, logits_nbv)
        tok, slp = sample_token(_row_keys(keys_b, n, step), sample_logits, config)
        return tok, model_logprob(logits_nbv, tok), slp

    logits_bv, prefix_cache = model.prefill(prompt_bt, prompt_mask_bt)
    stages = cache_stages(L)
    new_cache = lambda m: jax.vmap(lambda _: model.init_sample_cache(B, m))(jnp.arange(n))
    decode_n = jax.vmap(model.decode_step, in_axes=(0, None, None, 0))

    tok, lp, slp = pick(0, jnp.broadcast_to(logits_bv, (n, *logits_bv.shape)))
    done = jnp.isin(tok, eos_e)
    if live_b is not None:
        done = done | ~jnp.asarray(live_b, bool)[None, :]
    buf = lambda fill, dtype, first: constrain(jnp.full((L, n, B), fill, dtype).at[0].set(first), 2)
    carry = (
        jnp.int32(0),
        tok,
        done,
        new_cache(stages[0]),
        buf(pad_id, jnp.int32, tok),
        buf(False, jnp.bool_, jnp.ones_like(done)),
        buf(0.0, jnp.float32, lp),
        buf(0.0, jnp.float32, slp),
    )

    def cond(carry):
        step, _, done = carry[:3]
        return (step + 1 < L) & ~jnp.all(done)

    def body(carry):
        step, tok, done, cache_n, out_tok, out_mask, out_lp, out_slp = carry
        logits_nbv, cache_n = decode_n(tok, step, prefix_cache, cache_n)
        new, lp, slp = pick(step + 1, logits_nbv)
        live = ~done
        out_tok = out_tok.at[step + 1].set(jnp.where(live, new, pad_id))
        out_mask = out_mask.at[step + 1].set(live)
        out_lp = out_lp.at[step + 1].set(jnp.where(live, lp, 0.0))
        out_slp = out_slp.at[step + 1].set(jnp.where(live, slp, 0.0))
        done = done | jnp.isin(new, eos_e)
        return step + 1, new, done, cache_n, out_tok, out_mask, out_lp, out_slp

    for i, m in enumerate(stages):  # steps < m write slot < m: run them on a cache of m slots
        if i:
            grow = lambda zeros, old: jax.lax.dynamic_update_slice(zeros, old, (0,) * old.ndim)
            carry = (*carry[:3], jax.tree.map(grow, new_cache(m), carry[3]), *carry[4:])
        carry = jax.lax.while_loop(lambda c, m=m: cond(c) & (c[0] < m), body, carry)
    *_, out_tok, out_mask, out_lp, out_slp = carry
    # Steps never reached (early stop) keep their fill: pad / False / 0.
    bnl = lambda x: constrain(jnp.transpose(x, (2, 1, 0)), 0)
    mask = bnl(out_mask)
    return SampleOutput(
        tokens=bnl(out_tok),
        mask=mask,
        lengths=jnp.sum(mask, -1, dtype=jnp.int32),
        logprobs=bnl(out_lp),
        sample_logprobs=bnl(out_slp),
    )


def pad_prompts(
    prompts: Sequence[Sequence[int]],
    *,
    length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
    batch_multiple: int = 1,
    pad_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists to ``[B', T]``: T = smallest length bucket that fits (a longer prompt is an
    error), B' = next power of two >= B rounded up to ``batch_multiple`` (:mod:`infalign_jax.padding`).
    Padding rows hold one real ``pad_id`` token (so attention is never empty); callers drop them. Returns
    (tokens int32 [B', T], mask int32 [B', T])."""
    prompts = [list(p) for p in prompts]
    if not prompts:
        raise UsageError("no prompts given")
    if empty := [i for i, p in enumerate(prompts) if not p]:
        raise UsageError(f"prompt(s) {empty} have no tokens; each prompt needs at least one (e.g. BOS)")
    T = padding.bucket_size(
        max(map(len, prompts)),
        length_buckets,
        overflow="raise",
        too_long=lambda n, top: f"prompt of {n} tokens exceeds the largest length bucket {top}",
    )
    B = padding.pow2_batch(len(prompts), batch_multiple)
    tokens, mask = padding.pad_rows(prompts, T, B, side="left", pad_value=pad_id)
    mask[len(prompts) :, -1] = 1  # padding rows (padding.valid_rows: False) attend to one pad token
    return tokens, mask


MAX_EOS_IDS = 8
_TRACES = [0]


def trace_count() -> int:
    """How many times the Sampler's jitted function has been traced (compiled) in this process."""
    return _TRACES[0]


@functools.partial(jax.jit, static_argnames=("graphdef", "n", "max_new_tokens", "config", "mesh"))
def _sample_jit(
    state, prompt_bt, mask_bt, key, eos_e, pad_id, num_prompts, *, graphdef, n, max_new_tokens, config, mesh
):
    _TRACES[0] += 1  # runs only while tracing
    rows_b = jnp.arange(prompt_bt.shape[0])
    keys_b = jax.vmap(lambda i: jax.random.fold_in(key, i))(rows_b)
    return generate(
        nnx.merge(graphdef, state).decoder(),
        prompt_bt,
        mask_bt,
        keys_b,
        n=n,
        max_new_tokens=max_new_tokens,
        config=config,
        eos_ids=eos_e,
        pad_id=pad_id,
        batch_sharding=data_sharding(mesh, 1) if mesh is not None else None,
        live_b=rows_b < num_prompts,  # batch-padding rows start finished
    )


class Sampler:
    """Host-side sampler over a fixed model: buckets, jit cache, mesh sharding, numpy results.

    >>> sampler = Sampler(model, eos_ids=model.config.eos_token_ids, pad_id=0)
    >>> out = sampler.sample([[2, 651, 1234], [2, 99]], n=4, max_new_tokens=32, seed=0,
    ...                      config=SamplingConfig(temperature=0.7, top_p=0.9))
    >>> out.tokens.shape  # (2, 4, 32)

    One jitted function serves all samplers, compiled once per (model structure, prompt bucket [B', T], n,
    max_new_tokens, config, mesh); new prompts, seeds, EOS / pad ids and weights of the same shapes reuse it.
    mesh: shard the (padded) prompt batch over its 'data' axis; parameters are placed by
    :func:`infalign_jax.models.shard_state` (replicated unless the mesh has an 'fsdp' axis > 1).
    """

    def __init__(
        self,
        model,
        *,
        eos_ids: Sequence[int] = (),
        pad_id: int = 0,
        mesh: Mesh | None = None,
        length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
    ):
        from infalign_jax.models import shard_state

        self.graphdef, state = nnx.split(model)
        self.mesh = mesh
        self.state = shard_state(state, mesh) if mesh is not None else state
        eos_ids = tuple(int(e) for e in eos_ids)
        if len(eos_ids) > MAX_EOS_IDS or any(e < 0 for e in eos_ids):
            raise UsageError(f"eos_ids must be at most {MAX_EOS_IDS} token ids >= 0, got {eos_ids}")
        self.eos_ids = eos_ids
        self.pad_id = int(pad_id)
        self.length_buckets = tuple(sorted(length_buckets))
        self.max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)

    @property
    def trace_count(self) -> int:
        """Process-wide trace count of the jitted sampler (see :func:`trace_count`)."""
        return trace_count()

    def pad(self, prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """The bucketed, left-padded ``(tokens [B', T], mask [B', T])`` this sampler feeds to the model."""
        multiple = self.mesh.shape[DATA] if self.mesh is not None else 1
        return pad_prompts(
            prompts, length_buckets=self.length_buckets, batch_multiple=multiple, pad_id=self.pad_id
        )

    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        n: int,
        max_new_tokens: int,
        seed: int | None = None,
        key: jax.Array | None = None,
        config: SamplingConfig = SamplingConfig(),
    ) -> SampleOutput:
        """Samples n continuations of each token-id prompt; returns numpy arrays for the real B prompts.

        Prompt i uses key ``fold_in(key, i)`` (key = ``jax.random.key(seed)`` if a seed is given; ``seed``
        in [0, 2**32), ``key`` a typed key or raw uint32 key data), sample j of it ``fold_in(., j)``: same
        seed -> same samples, whatever the batch padding or mesh.
        """
        if (seed is None) == (key is None):
            raise UsageError("pass exactly one of seed= or key=")
        if int(n) != n or n < 1:
            raise UsageError(f"n must be an integer >= 1, got {n}")
        if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens}")
        key = seed_key(seed) if key is None else as_typed_key(key)
        tokens, mask = self.pad(prompts)
        if self.vocab_size is not None:  # jnp.take would clamp / wrap them: NaN log-probs or another token
            real = tokens[mask.astype(bool)]
            if (bad := real[(real < 0) | (real >= self.vocab_size)]).size:
                ids, v = bad[:3].tolist(), self.vocab_size
                raise UsageError(f"prompt token id(s) {ids} outside the model's vocabulary [0, {v})")
        longest = max(len(p) for p in prompts)
        if self.max_positions is not None and longest + max_new_tokens > self.max_positions:
            raise UsageError(
                f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the model's "
                f"max_position_embeddings {self.max_positions}"
            )
        eos_e = np.full((MAX_EOS_IDS,), -1, np.int32)
        eos_e[: len(self.eos_ids)] = self.eos_ids
        if self.mesh is not None:
            tokens, mask = jax.device_put((tokens, mask), data_sharding(self.mesh, 2))
        out = _sample_jit(
            self.state,
            tokens,
            mask,
            key,
            eos_e,
            np.int32(self.pad_id),
            np.int32(len(prompts)),
            graphdef=self.graphdef,
            n=int(n),
            max_new_tokens=int(max_new_tokens),
            config=config,
            mesh=self.mesh,
        )
        return SampleOutput(*(np.asarray(x)[: len(prompts)] for x in out))
