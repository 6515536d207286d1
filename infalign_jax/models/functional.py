"""Pure-functional entry points over a split model: ``nnx.split(model)`` once, then jit these.

Each function merges the state into a module inside the trace (free at run time) and calls the pure math in
:mod:`infalign_jax.models.transformer`. ``graphdef`` is static; pass it by closure or ``static_argnums``::

    graphdef, state = nnx.split(model)
    fwd = jax.jit(functools.partial(functional.forward, graphdef))
    logits_btv = fwd(state, tokens_bt)

For the sampler (vmapped over N samples of a prompt; the prompt cache is shared, not copied)::

    logits_bv, prefix = functional.prefill(graphdef, state, tokens_bt, mask_bt, max_new)
    cache_nb = jax.vmap(lambda _: functional.init_sample_cache(graphdef, state, B, max_new))(jnp.arange(N))
    step_fn = jax.vmap(functools.partial(functional.decode_step, graphdef), in_axes=(None, 0, None, None, 0))
    logits_nbv, cache_nb = step_fn(state, tokens_nb, step, prefix, cache_nb)
"""

from __future__ import annotations

from flax import nnx


def forward(graphdef, state, tokens_bt, positions_bt=None, mask_bt=None):
    """logits [B, T, V] (float32)."""
    return nnx.merge(graphdef, state)(tokens_bt, positions_bt, mask_bt)


def token_logprobs(graphdef, state, tokens_bt, positions_bt=None, mask_bt=None, *, chunk: int = 256):
    """log p(tokens[:, t+1] | prefix) [B, T-1], vocab-chunked (no full [B, T, V] logits in memory)."""
    return nnx.merge(graphdef, state).token_logprobs(tokens_bt, positions_bt, mask_bt, chunk=chunk)


def shared_prefix_logprobs(
    graphdef, state, prompt_bt, prompt_mask_bt, response_bsl, response_mask_bsl, *, chunk: int = 256
):
    """log p(response[b, s, i] | prompt_b, response[b, s, :i]) [B, S, L], each prompt run once for its S
    responses (differentiable); see :func:`transformer.shared_prefix_logprobs`."""
    return nnx.merge(graphdef, state).shared_prefix_logprobs(
        prompt_bt, prompt_mask_bt, response_bsl, response_mask_bsl, chunk=chunk
    )


def prefill(graphdef, state, tokens_bt, mask_bt, max_new_tokens=None):
    """(logits_bv, prefix_cache) for a left-padded prompt batch; see :func:`transformer.prefill`."""
    return nnx.merge(graphdef, state).prefill(tokens_bt, mask_bt, max_new_tokens)


def init_sample_cache(graphdef, state, batch: int, max_new_tokens: int):
    """Zero per-sample K/V cache {k, v: L-tuples of [batch, K, max_new_tokens, Dh]}."""
    return nnx.merge(graphdef, state).init_sample_cache(batch, max_new_tokens)


def decode_step(graphdef, state, tokens_b, step, prefix_cache, sample_cache):
    """(logits_bv, sample_cache) for one new token per row; see :func:`transformer.decode_step`."""
    return nnx.merge(graphdef, state).decode_step(tokens_b, step, prefix_cache, sample_cache)
