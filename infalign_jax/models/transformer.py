"""One decoder-only transformer for Llama, Qwen2 and Gemma 3 (switches in :class:`ModelConfig`).

Layout. Per-layer weights are stacked along a leading layer axis ``L`` and the layers run under ``lax.scan``
(one compiled layer body however deep the model is). Layer-dependent constants -- the sliding window and the
RoPE inverse frequencies of each layer's type (Gemma 3 interleaves local sliding-window layers, RoPE base 10k,
with global layers, base 1M) -- are scanned alongside as arrays, so mixed local/global stacks still share one
body.

Parameter names (shapes; ``D`` hidden, ``F`` ffn, ``H``/``K`` query/kv heads, ``Dh`` head dim, ``V`` vocab):
``embed [V, D]``, ``final_norm [D]``, ``lm_head [D, V]`` (untied only), and under ``layers``: ``attn_norm [L,
D]``, ``q [L, D, H*Dh]``, ``k``/``v [L, D, K*Dh]``, ``o [L, H*Dh, D]``, optional
``q_bias``/``k_bias``/``v_bias``/``o_bias``, ``q_norm``/``k_norm [L, Dh]`` (QK-norm), ``attn_post_norm [L,
D]`` (Gemma), ``mlp_norm [L, D]``, ``gate``/``up [L, D, F]``, ``down [L, F, D]``, optional ``*_bias``,
``mlp_post_norm [L, D]`` (Gemma). Every weight carries an ``out_sharding`` annotation that shards its hidden
(``D``) axis over the mesh axis ``'fsdp'`` (the vocab axis for ``embed``/``lm_head``); see
:func:`infalign_jax.models.sharding.state_shardings`.

Pure-functional use: ``graphdef, state = nnx.split(model)`` once, then jit functions of ``state`` that call
``nnx.merge(graphdef, state)`` (see :mod:`infalign_jax.models.functional`). The math lives in module-level
pure functions of ``(config, params)``: :func:`forward`, :func:`prefill`, :func:`decode_step`,
:func:`init_sample_cache`, and :func:`shared_prefix_logprobs` (S continuations of each prompt, the prompt
run once).

KV cache (for the vmapped best-of-N sampler). ``prefill`` runs the left-padded prompt once and returns a
``prefix_cache`` {k, v: L-tuples of [B, K, T, Dh], mask_bt, positions_bt, lengths_b}; each sample owns a
``sample_cache`` {k, v: L-tuples of [B, K, M, Dh]} of its ``M = max_new_tokens`` generated keys.
``decode_step`` attends to the two segments separately (scores are concatenated only after the dot
products), so vmapping it over samples with the prefix cache unbatched never copies the prompt cache. Caches
are head-major (``[B, K, S, Dh]``), one buffer per layer: the decode attention is then a batched matmul over
(B, K) that reads each cache where it lies; a sequence-major layout made XLA:CPU transpose, and stacked
[L, ...] caches made it copy, every layer's cache at every step (measured in docs/sampler.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infalign_jax.models.config import SLIDING, ModelConfig, RopeConfig

Params = dict[str, Any]
_NO_WINDOW = np.int32(2**30)
_NEG = -1e30  # additive mask value: finite, so fully masked (padding) query rows stay NaN-free


# ----------------------------------------------------------------------------------------------- building blo
def rms_norm(x, w, eps: float, offset: float):
    """RMSNorm in float32: ``x / rms(x) * (offset + w)`` (offset 1 for Gemma's zero-centred weights)."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * (offset + w.astype(jnp.float32))).astype(x.dtype)


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """Inverse frequencies [Dh/2] (float32), with 'linear' or 'llama3' scaling as in transformers' rope
    utils."""
    f32 = np.float32
    inv = f32(1.0) / (f32(rope.theta) ** (np.arange(0, head_dim, 2).astype(f32) / f32(head_dim)))
    if rope.rope_type == "linear":
        inv = inv / rope.factor
    elif rope.rope_type == "llama3":
        low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
        high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
        smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def layer_constants(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer ``(inv_freq_lf [L, Dh/2], window_l [L])``; window 2**30 for full-attention layers."""
    local = config.rope_local or config.rope
    full_f, local_f = rope_inv_freq(config.rope, config.head_dim), rope_inv_freq(local, config.head_dim)
    inv = np.stack([local_f if t == SLIDING else full_f for t in config.layer_types])
    win = np.array(
        [config.sliding_window if t == SLIDING else _NO_WINDOW for t in config.layer_types], np.int32
    )
    return inv, win


def apply_rope(x_btnd, positions_bt, inv_freq_f):
    """Rotary embedding, transformers' rotate-half convention, angles computed in float32."""
    ang = positions_bt.astype(jnp.float32)[..., None] * inv_freq_f  # [B, T, Dh/2]
    cos = jnp.concatenate([jnp.cos(ang), jnp.cos(ang)], -1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(ang), jnp.sin(ang)], -1)[:, :, None, :]
    x32 = x_btnd.astype(jnp.float32)
    half = x32.shape[-1] // 2
    rot = jnp.concatenate([-x32[..., half:], x32[..., :half]], -1)
    return (x32 * cos + rot * sin).astype(x_btnd.dtype)


def _linear(x, w, b=None):
    y = jnp.einsum("...i,io->...o", x, w)
    return y if b is None else y + b


def _project_qkv(config: ModelConfig, lp: Params, x_btd, positions_bt, inv_freq_f):
    """Pre-norm + q/k/v projections (+bias, QK-norm, RoPE). Returns q [B,T,K,G,Dh], k/v [B,T,K,Dh]."""
    c = config
    b, t = x_btd.shape[:2]
    h = rms_norm(x_btd, lp["attn_norm"], c.rms_norm_eps, c.norm_offset)
    q = _linear(h, lp["q"], lp.get("q_bias")).reshape(b, t, c.num_heads, c.head_dim)
    k = _linear(h, lp["k"], lp.get("k_bias")).reshape(b, t, c.num_kv_heads, c.head_dim)
    v = _linear(h, lp["v"], lp.get("v_bias")).reshape(b, t, c.num_kv_heads, c.head_dim)
    if c.qk_norm:
        q = rms_norm(q, lp["q_norm"], c.rms_norm_eps, c.norm_offset)
        k = rms_norm(k, lp["k_norm"], c.rms_norm_eps, c.norm_offset)
    q = apply_rope(q, positions_bt, inv_freq_f)
    k = apply_rope(k, positions_bt, inv_freq_f)
    q = q.reshape(b, t, c.num_kv_heads, c.num_heads // c.num_kv_heads, c.head_dim)
    return q, k, v


def _segment_attention(config: ModelConfig, q, segments, scores_eq: str, out_eq: str):
    """Softmax attention of ``q`` over several key segments ``(k, v, allowed)`` jointly.

    Scores ``einsum(scores_eq, q, k)`` are computed per segment (float32, optional soft-cap, masked where
    ``allowed`` -- already broadcastable to them -- is False) and concatenated along the key axis (last), so a
    segment shared across a vmapped sample axis (the prompt cache) is never broadcast/copied; one softmax;
    the output is the sum of ``einsum(out_eq, p_segment, v)``.
    """
    q = q * jnp.asarray(config.scale, q.dtype)
    scores = []
    for k, _, allowed in segments:
        s = jnp.einsum(scores_eq, q, k, preferred_element_type=jnp.float32)
        if config.attn_logit_softcap:
            s = jnp.tanh(s / config.attn_logit_softcap) * config.attn_logit_softcap
        scores.append(jnp.where(allowed, s, _NEG))
    sizes = [s.shape[-1] for s in scores]
    p = jax.nn.softmax(jnp.concatenate(scores, -1), axis=-1)
    out = 0.0
    start = 0
    for (_, v, _), n in zip(segments, sizes, strict=True):
        out = out + jnp.einsum(out_eq, p[..., start : start + n].astype(v.dtype), v)
        start += n
    return out


def _attend(config: ModelConfig, q_btkgd, segments):
    """Attention of q [B, T, K, G, Dh] over sequence-major segments ``(k_bskd, v_bskd, allowed_bts)``
    (prefill / full forward). Returns [B, T, H * Dh]."""
    segments = [(k, v, allowed[:, None, None]) for k, v, allowed in segments]
    out = _segment_attention(config, q_btkgd, segments, "btkgd,bskd->bkgts", "bkgts,bskd->btkgd")
    b, t = q_btkgd.shape[:2]
    return out.reshape(b, t, config.num_heads * config.head_dim)


def _attend_decode(config: ModelConfig, q_bkgd, segments):
    """Attention of ONE query position per row (a decode step) over head-major segments ``(k_bksd, v_bksd,
    allowed_bs)``: every contraction is a plain batched matmul over (B, K), ``[G, Dh] x [S, Dh]^T`` and
    ``[G, S] x [S, Dh]``, reading the caches where they lie. Returns [B, 1, H * Dh]."""
    segments = [(k, v, allowed[:, None, None, :]) for k, v, allowed in segments]
    out = _segment_attention(config, q_bkgd, segments, "bkgd,bksd->bkgs", "bkgs,bksd->bkgd")
    return out.reshape(q_bkgd.shape[0], 1, config.num_heads * config.head_dim)


def _block(config: ModelConfig, lp: Params, x_btd, positions_bt, inv_freq_f, allowed_btt, prefix=()):
    """One decoder layer over ``x_btd``: its queries attend to the ``prefix`` segments ``(k_bskd, v_bskd,
    allowed_bts)`` (keys computed elsewhere, e.g. a shared prompt) and then to its own keys (``allowed_btt``).
    Returns ``(x_btd, k_btkd, v_btkd)``."""
    q, k, v = _project_qkv(config, lp, x_btd, positions_bt, inv_freq_f)
    x = _attn_out_and_mlp(config, lp, x_btd, _attend(config, q, [*prefix, (k, v, allowed_btt)]))
    return x, k, v


def _attn_out_and_mlp(config: ModelConfig, lp: Params, x_btd, attn_bth):
    """Output projection, residual, (post-)norms and the gated MLP (SwiGLU / GeGLU)."""
    c = config
    a = _linear(attn_bth, lp["o"], lp.get("o_bias"))
    if c.post_norms:
        a = rms_norm(a, lp["attn_post_norm"], c.rms_norm_eps, c.norm_offset)
    x = x_btd + a
    h = rms_norm(x, lp["mlp_norm"], c.rms_norm_eps, c.norm_offset)
    act = jax.nn.silu if c.activation == "silu" else (lambda z: jax.nn.gelu(z, approximate=True))
    m = act(_linear(h, lp["gate"], lp.get("gate_bias"))) * _linear(h, lp["up"], lp.get("up_bias"))
    m = _linear(m, lp["down"], lp.get("down_bias"))
    if c.post_norms:
        m = rms_norm(m, lp["mlp_post_norm"], c.rms_norm_eps, c.norm_offset)
    return x + m


def _embed(config: ModelConfig, params: Params, tokens_bt):
    x = jnp.take(params["embed"], tokens_bt, axis=0)
    if config.embed_scale:
        x = x * jnp.asarray(math.sqrt(config.hidden_size), x.dtype)
    return x


def _logits(config: ModelConfig, params: Params, x_btd):
    h = rms_norm(x_btd, params["final_norm"], config.rms_norm_eps, config.norm_offset)
    if config.tie_embeddings:
        logits = jnp.einsum("...d,vd->...v", h, params["embed"], preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("...d,dv->...v", h, params["lm_head"], preferred_element_type=jnp.float32)
    if config.final_logit_softcap:
        logits = jnp.tanh(logits / config.final_logit_softcap) * config.final_logit_softcap
    return logits


def default_positions(mask_bt):
    """``cumsum(mask) - 1``: position 0 at the first real token, so left-padded rows line up."""
    return jnp.cumsum(mask_bt.astype(jnp.int32), axis=1) - 1


# ----------------------------------------------------------------------------------------------- pure functio
def hidden_states(
    config: ModelConfig, params: Params, tokens_bt, positions_bt=None, mask_bt=None, *, kv=False
):
    """Runs all layers; returns final hidden [B, T, D] (pre final norm) and, if ``kv``, stacked k/v
    [L,B,T,K,Dh]."""
    b, t = tokens_bt.shape
    mask_bt = jnp.ones((b, t), bool) if mask_bt is None else mask_bt.astype(bool)
    positions_bt = default_positions(mask_bt) if positions_bt is None else positions_bt.astype(jnp.int32)
    inv_freq_lf, window_l = layer_constants(config)
    causal_tt = jnp.tril(jnp.ones((t, t), bool))
    dist_btt = positions_bt[:, :, None] - positions_bt[:, None, :]
    base_btt = causal_tt[None] & mask_bt[:, None, :]

    def layer(x, xs):
        lp, inv_freq_f, window = xs
        x, k, v = _block(config, lp, x, positions_bt, inv_freq_f, base_btt & (dist_btt < window))
        return x, ((k, v) if kv else None)

    x, kv_out = jax.lax.scan(
        layer, _embed(config, params, tokens_bt), (params["layers"], inv_freq_lf, window_l)
    )
    return (x, kv_out) if kv else x


def forward(config: ModelConfig, params: Params, tokens_bt, positions_bt=None, mask_bt=None):
    """Full forward: logits [B, T, V] (float32). ``mask_bt`` (1 = real token) hides padding keys."""
    return _logits(config, params, hidden_states(config, params, tokens_bt, positions_bt, mask_bt))


def token_logprobs(
    config: ModelConfig, params: Params, tokens_bt, positions_bt=None, mask_bt=None, *, chunk: int = 256
):
    """``logp_bt1[:, t] = log p(tokens[:, t+1] | tokens[:, :t+1])``, shape [B, T-1] (float32).

    Memory-light for large vocabularies (Gemma: V = 262k): logits are formed ``chunk`` positions at a time
    under ``jax.checkpoint``, so neither the forward nor the backward pass holds the full [B, T, V] logits.
    """
    h = hidden_states(config, params, tokens_bt, positions_bt, mask_bt)[:, :-1]
    return _chunked_logprobs(config, params, h, tokens_bt[:, 1:], chunk)


def _chunked_logprobs(config: ModelConfig, params: Params, h_btd, targets_bt, chunk: int):
    """``log softmax(logits(h))[targets]`` [B, T] for final hidden states ``h_btd`` (pre final norm), the
    logits formed ``chunk`` positions at a time under ``jax.checkpoint``."""
    b, t1, d = h_btd.shape
    c = max(1, min(chunk, t1))
    pad = (-t1) % c
    h_nbcd = jnp.pad(h_btd, ((0, 0), (0, pad), (0, 0))).reshape(b, -1, c, d).swapaxes(0, 1)
    tg_nbc = jnp.pad(targets_bt, ((0, 0), (0, pad))).reshape(b, -1, c).swapaxes(0, 1)

    @jax.checkpoint
    def one(args):
        h_bcd, t_bc = args
        logits = _logits(config, params, h_bcd)
        picked = jnp.take_along_axis(logits, t_bc[..., None].astype(jnp.int32), axis=-1)[..., 0]
        return picked - jax.nn.logsumexp(logits, axis=-1)

    out_nbc = jax.lax.map(one, (h_nbcd, tg_nbc))
    return out_nbc.swapaxes(0, 1).reshape(b, -1)[:, :t1]


def shared_prefix_hidden_states(
    config: ModelConfig, params: Params, prompt_bt, prompt_mask_bt, response_bsl, response_mask_bsl
):
    """Final hidden states (pre final norm) of a LEFT-padded prompt batch [B, T, D] and of S continuations of
    every prompt [B, S, L, D], each prompt's activations computed ONCE for its S continuations.

    Equal, up to float roundoff, to :func:`hidden_states` of every ``[prompt_b | response_bs]`` with mask
    ``[prompt_mask_b | response_mask_bs]`` and positions ``cumsum(mask) - 1`` (so a continuation's positions
    go on from its prompt's real length; padding keys hidden; sliding windows on these absolute positions):
    under the causal mask the prompt rows never see the continuation, so they are one :func:`hidden_states`
    of the prompt, and a continuation's queries attend to [the prompt's keys; its own keys] — prefix
    self-attention plus suffix attention, as in Prefix Grouper (arXiv 2506.05433). Every layer runs the
    prompt once, then the continuations vmapped over S with the prompt's k/v closed over (unbatched): the
    score and value einsums broadcast them, the prompt cache is never copied S times, and under autodiff
    the gradients of all S continuations sum into the one prompt computation.
    """
    b, t = prompt_bt.shape
    s, length = response_bsl.shape[1:]
    mask_bt = prompt_mask_bt.astype(bool)
    pos_bt = default_positions(mask_bt)
    # Continuations sample-major [S, B, L]: the vmapped axis leads, so no per-layer transposes.
    rmask_sbl = jnp.swapaxes(response_mask_bsl.astype(bool), 0, 1)
    lengths_b = jnp.sum(mask_bt, axis=1, dtype=jnp.int32)
    pos_sbl = lengths_b[None, :, None] + jnp.cumsum(rmask_sbl.astype(jnp.int32), axis=-1) - 1
    inv_freq_lf, window_l = layer_constants(config)
    base_btt = jnp.tril(jnp.ones((t, t), bool))[None] & mask_bt[:, None, :]
    dist_btt = pos_bt[:, :, None] - pos_bt[:, None, :]
    dist_sblt = pos_sbl[..., None] - pos_bt[None, :, None, :]  # prompt keys: always before, real ones allowed
    base_sbll = jnp.tril(jnp.ones((length, length), bool)) & rmask_sbl[:, :, None, :]
    dist_sbll = pos_sbl[..., :, None] - pos_sbl[..., None, :]

    def layer(carry, xs):
        x_btd, x_sbld = carry
        lp, inv_freq_f, window = xs
        x_btd, k_btkd, v_btkd = _block(config, lp, x_btd, pos_bt, inv_freq_f, base_btt & (dist_btt < window))
        allowed_prompt_sblt = mask_bt[None, :, None, :] & (dist_sblt < window)

        def continuation(x_bld, pos_bl, allowed_prompt_blt, allowed_own_bll):
            prefix = [(k_btkd, v_btkd, allowed_prompt_blt)]
            return _block(config, lp, x_bld, pos_bl, inv_freq_f, allowed_own_bll, prefix)[0]

        x_sbld = jax.vmap(continuation)(
            x_sbld, pos_sbl, allowed_prompt_sblt, base_sbll & (dist_sbll < window)
        )
        return (x_btd, x_sbld), None

    x0 = (_embed(config, params, prompt_bt), _embed(config, params, jnp.swapaxes(response_bsl, 0, 1)))
    (x_btd, x_sbld), _ = jax.lax.scan(layer, x0, (params["layers"], inv_freq_lf, window_l))
    return x_btd, jnp.swapaxes(x_sbld, 0, 1)


def shared_prefix_logprobs(
    config: ModelConfig,
    params: Params,
    prompt_bt,
    prompt_mask_bt,
    response_bsl,
    response_mask_bsl,
    *,
    chunk: int = 256,
):
    """``logp_bsl[b, s, i] = log p(response[b, s, i] | prompt_b, response[b, s, :i])`` [B, S, L] (float32),
    each prompt run once for its S responses (:func:`shared_prefix_hidden_states`; differentiable).

    Equal, up to float roundoff, to ``token_logprobs`` of ``[prompt | response]`` (mask ``[prompt_mask |
    response_mask]``) at the response positions, for every sample. Values at masked response positions are
    whatever that computation gives there (callers mask them). The first response token is scored from the
    prompt's last hidden state (one [B, V] logits row per prompt), the others vocab-chunked as in
    :func:`token_logprobs`.
    """
    h_btd, h_bsld = shared_prefix_hidden_states(
        config, params, prompt_bt, prompt_mask_bt, response_bsl, response_mask_bsl
    )
    b, s, length = response_bsl.shape
    response_bsl = response_bsl.astype(jnp.int32)
    logits_bv = _logits(config, params, h_btd[:, -1])
    picked_bs = jnp.take_along_axis(logits_bv, response_bsl[:, :, 0], axis=-1)
    first_bs1 = (picked_bs - jax.nn.logsumexp(logits_bv, axis=-1, keepdims=True))[..., None]
    if length == 1:
        return first_bs1
    d = h_bsld.shape[-1]
    rest = _chunked_logprobs(
        config,
        params,
        h_bsld[:, :, :-1].reshape(b * s, length - 1, d),
        response_bsl[:, :, 1:].reshape(b * s, length - 1),
        chunk,
    )
    return jnp.concatenate([first_bs1, rest.reshape(b, s, length - 1)], axis=-1)


def prefill(config: ModelConfig, params: Params, tokens_bt, mask_bt, max_new_tokens: int | None = None):
    """Runs a LEFT-padded prompt batch once. Returns ``(logits_bv, prefix_cache)``.

    ``logits_bv``: next-token logits after the last prompt token (index T-1). ``prefix_cache``: ``{"k", "v":
    tuples of L arrays [B, K, T, Dh], "mask_bt": bool, "positions_bt": int32, "lengths_b": int32}``.
    ``max_new_tokens`` is only checked against ``max_position_embeddings`` (static), together with the PADDED
    width T — conservative for left-padded rows; :class:`~infalign_jax.sampling.Sampler` checks the real
    prompt lengths on the host instead and does not pass it.
    """
    b, t = tokens_bt.shape
    if max_new_tokens is not None and t + int(max_new_tokens) > config.max_position_embeddings:
        from infalign_jax.errors import UsageError

        raise UsageError(
            f"prompt length {t} + max_new_tokens {max_new_tokens} exceeds max_position_embeddings "
            f"{config.max_position_embeddings}"
        )
    mask_bt = mask_bt.astype(bool)
    positions_bt = default_positions(mask_bt)
    x, (k, v) = hidden_states(config, params, tokens_bt, positions_bt, mask_bt, kv=True)
    logits_bv = _logits(config, params, x[:, -1])
    cache = {  # [L, B, T, K, Dh] -> L head-major [B, K, T, Dh] buffers, once per prompt
        "k": tuple(jnp.swapaxes(k, 2, 3)),
        "v": tuple(jnp.swapaxes(v, 2, 3)),
        "mask_bt": mask_bt,
        "positions_bt": positions_bt,
        "lengths_b": jnp.sum(mask_bt, axis=1, dtype=jnp.int32),
    }
    return logits_bv, cache


def init_sample_cache(config: ModelConfig, batch: int, max_new_tokens: int, dtype=None):
    """Zero K/V cache of one sample's generated tokens: ``{"k", "v": tuples of L arrays [batch, K,
    max_new_tokens, Dh]}`` (one buffer per layer, see :func:`decode_step`)."""
    shape = (batch, config.num_kv_heads, max_new_tokens, config.head_dim)
    dtype = jnp.dtype(config.dtype) if dtype is None else dtype
    zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    return {"k": zeros(), "v": zeros()}


def decode_step(config: ModelConfig, params: Params, tokens_b, step, prefix_cache, sample_cache):
    """One generated token per row at generation step ``step`` (scalar; position = prompt length + step).

    Writes this token's k/v into slot ``step`` of the sample cache, then attends to the prompt cache (real
    tokens, within the sliding window on absolute positions) and to this sample's slots <= ``step``. Returns
    ``(logits_bv, sample_cache)``. Vmap over samples with ``in_axes=(0, None, None, 0)``. ``params["layers"]``
    may be stacked (as everywhere else) or a tuple of per-layer dicts (:func:`unstack_layers`); a decode loop
    should unstack once outside the loop (see :class:`Decoder`), since XLA does not hoist the per-layer slices
    of stacked weights out of a while loop and copies every weight at every step.

    The layers run as an unrolled Python loop over per-layer cache buffers (the caches are tuples of L
    arrays): each layer's cache is then its own buffer, updated in place and read by the attention matmuls
    directly. Under ``lax.scan`` over stacked [L, ...] caches XLA:CPU copied every layer's cache slice at
    every step (measured in docs/sampler.md); the unrolled body costs compile time linear in L instead.
    """
    step = jnp.asarray(step, jnp.int32)
    inv_freq_lf, window_l = layer_constants(config)
    pos_b = prefix_cache["lengths_b"] + step
    b = tokens_b.shape[0]
    m = sample_cache["k"][0].shape[2]
    slot_m = jnp.arange(m, dtype=jnp.int32)
    dist_prefix_bs = pos_b[:, None] - prefix_cache["positions_bt"]
    dist_sample_s = step - slot_m
    x = _embed(config, params, tokens_b[:, None])
    layers = params["layers"]
    layers = layers if isinstance(layers, tuple) else unstack_layers(layers)
    # this token's k/v [B, 1, K, Dh] into slot `step` of a layer's [B, K, M, Dh] cache
    put = lambda cache, new: jax.lax.dynamic_update_slice_in_dim(
        cache, new[:, 0, :, None].astype(cache.dtype), step, axis=2
    )
    new_k, new_v = [], []
    for i, lp in enumerate(layers):
        q, k, v = _project_qkv(config, lp, x, pos_b[:, None], inv_freq_lf[i])
        sk, sv = put(sample_cache["k"][i], k), put(sample_cache["v"][i], v)
        allow_prefix = prefix_cache["mask_bt"] & (dist_prefix_bs < window_l[i])
        allow_sample = jnp.broadcast_to(((slot_m <= step) & (dist_sample_s < window_l[i]))[None], (b, m))
        segments = [(prefix_cache["k"][i], prefix_cache["v"][i], allow_prefix), (sk, sv, allow_sample)]
        x = _attn_out_and_mlp(config, lp, x, _attend_decode(config, q[:, 0], segments))
        new_k.append(sk)
        new_v.append(sv)
    return _logits(config, params, x[:, 0]), {"k": tuple(new_k), "v": tuple(new_v)}


def unstack_layers(layers: Params) -> tuple[Params, ...]:
    """Stacked layer weights ``{name: [L, ...]}`` as a tuple of L per-layer dicts ``{name: [...]}``."""
    n = len(next(iter(layers.values())))
    return tuple({name: w[i] for name, w in layers.items()} for i in range(n))


@dataclasses.dataclass(frozen=True)
class Decoder:
    """The sampler's model interface (``prefill`` / ``init_sample_cache`` / ``decode_step``) over params.

    ``decoder(config, params)`` builds it inside a jitted function, before the decode loop: the per-layer
    weights for :func:`decode_step` are sliced there once (``layers``), while ``prefill`` keeps the stacked
    ``params`` for its layer scan.
    """

    config: ModelConfig
    params: Params
    layers: tuple

    def prefill(self, tokens_bt, mask_bt, max_new_tokens: int | None = None):
        return prefill(self.config, self.params, tokens_bt, mask_bt, max_new_tokens)

    def init_sample_cache(self, batch: int, max_new_tokens: int):
        return init_sample_cache(self.config, batch, max_new_tokens)

    def decode_step(self, tokens_b, step, prefix_cache, sample_cache):
        params = {**self.params, "layers": self.layers}
        return decode_step(self.config, params, tokens_b, step, prefix_cache, sample_cache)


def decoder(config: ModelConfig, params: Params) -> Decoder:
    """:class:`Decoder` of ``params`` (stacked layers), with the per-layer weights sliced once."""
    return Decoder(config, params, unstack_layers(params["layers"]))


# ----------------------------------------------------------------------------------------------- nnx module
def param_shapes(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[str | None, ...]]]:
    """Name -> (shape, out_sharding names) of every parameter (``layers.*`` names carry the leading L
    axis)."""
    c = config
    d, f, L, dh = c.hidden_size, c.intermediate_size, c.num_layers, c.head_dim
    hq, hk = c.num_heads * dh, c.num_kv_heads * dh
    fs = "fsdp"
    out: dict[str, tuple[tuple[int, ...], tuple[str | None, ...]]] = {
        "embed": ((c.vocab_size, d), (fs, None)),
        "final_norm": ((d,), (None,)),
    }
    if not c.tie_embeddings:
        out["lm_head"] = ((d, c.vocab_size), (None, fs))
    lay = {
        "attn_norm": ((L, d), (None, None)),
        "q": ((L, d, hq), (None, fs, None)),
        "k": ((L, d, hk), (None, fs, None)),
        "v": ((L, d, hk), (None, fs, None)),
        "o": ((L, hq, d), (None, None, fs)),
        "mlp_norm": ((L, d), (None, None)),
        "gate": ((L, d, f), (None, fs, None)),
        "up": ((L, d, f), (None, fs, None)),
        "down": ((L, f, d), (None, None, fs)),
    }
    if c.qkv_bias:
        lay.update(
            q_bias=((L, hq), (None, None)), k_bias=((L, hk), (None, None)), v_bias=((L, hk), (None, None))
        )
    if c.o_bias:
        lay["o_bias"] = ((L, d), (None, None))
    if c.mlp_bias:
        lay.update(
            gate_bias=((L, f), (None, None)), up_bias=((L, f), (None, None)), down_bias=((L, d), (None, None))
        )
    if c.qk_norm:
        lay.update(q_norm=((L, dh), (None, None)), k_norm=((L, dh), (None, None)))
    if c.post_norms:
        lay.update(attn_post_norm=((L, d), (None, None)), mlp_post_norm=((L, d), (None, None)))
    out.update({f"layers.{k}": v for k, v in lay.items()})
    return out


def _is_norm(name: str) -> bool:
    return name.endswith("norm")


def _is_bias(name: str) -> bool:
    return name.endswith("_bias")


class Layers(nnx.Module):
    """Stacked per-layer parameters (leading axis L); attributes named as in :func:`param_shapes`."""


class Transformer(nnx.Module):
    """Decoder-only LM (Llama / Qwen2 / Gemma 3). ``model(tokens_bt) -> logits_btv`` (float32).

    Random init: weights N(0, 0.02), biases 0, norms 1 (Gemma: 0, i.e. unit scale through its ``1 + w``).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        self.layers = Layers()
        for name, (shape, names) in param_shapes(config).items():
            if _is_norm(name):
                value = jnp.full(shape, 1.0 - config.norm_offset, dtype)
            elif _is_bias(name):
                value = jnp.zeros(shape, dtype)
            else:
                value = (0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
            param = nnx.Param(value, out_sharding=names, eager_sharding=False)
            if name.startswith("layers."):
                setattr(self.layers, name.split(".", 1)[1], param)
            else:
                setattr(self, name, param)

    def params(self) -> Params:
        """The parameters as a plain nested dict of arrays ``{"embed":..., "layers": {...}}``."""
        out: Params = {"layers": {}}
        for name in param_shapes(self.config):
            if name.startswith("layers."):
                short = name.split(".", 1)[1]
                out["layers"][short] = getattr(self.layers, short)[...]
            else:
                out[name] = getattr(self, name)[...]
        return out

    def __call__(self, tokens_bt, positions_bt=None, mask_bt=None):
        return forward(self.config, self.params(), tokens_bt, positions_bt, mask_bt)

    def token_logprobs(self, tokens_bt, positions_bt=None, mask_bt=None, *, chunk: int = 256):
        return token_logprobs(self.config, self.params(), tokens_bt, positions_bt, mask_bt, chunk=chunk)

    def shared_prefix_logprobs(
        self, prompt_bt, prompt_mask_bt, response_bsl, response_mask_bsl, *, chunk: int = 256
    ):
        return shared_prefix_logprobs(
            self.config,
            self.params(),
            prompt_bt,
            prompt_mask_bt,
            response_bsl,
            response_mask_bsl,
            chunk=chunk,
        )

    def prefill(self, tokens_bt, mask_bt, max_new_tokens: int | None = None):
        return prefill(self.config, self.params(), tokens_bt, mask_bt, max_new_tokens)

    def init_sample_cache(self, batch: int, max_new_tokens: int):
        return init_sample_cache(self.config, batch, max_new_tokens)

    def decode_step(self, tokens_b, step, prefix_cache, sample_cache):
        return decode_step(self.config, self.params(), tokens_b, step, prefix_cache, sample_cache)

    def decoder(self) -> Decoder:
        """The sampler interface, per-layer weights sliced once (call it inside the jitted function)."""
        return decoder(self.config, self.params())
