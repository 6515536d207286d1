"""The one token → text → reward adapter: policy token ids decoded to text, then scored as text.

A reward model reads its own tokens, so a policy sample reaches it as text: each row's real tokens (mask 1)
are decoded with the POLICY's tokenizer, ``tokenizer.decode(ids, skip_special_tokens=True)`` (BOS, EOS and
padding are not text), and the texts are re-tokenized by :meth:`~infalign_jax.reward.RewardModel.encode`
(which strips the leading space a policy reply usually starts with). :func:`decode_rows` is that decoding
step for any ``[B, T]`` batch (any padding side); :func:`make_reward_fn` is the whole path for flat
(prompt, response) batches. A policy-token reward model skips the adapter altogether: it scores the sampled
ids inside the train step (:mod:`infalign_jax.reward.policy_tokens`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from infalign_jax.reward.scoring import RewardModel


def decode_rows(tokenizer, tokens_bt, mask_bt=None) -> list[str]:
    """Texts [B] of token rows ``tokens_bt`` [B, T]: each row's real tokens (``mask_bt`` 1 = real, default
    all) decoded with ``tokenizer.decode(..., skip_special_tokens=True)``. A non-2-D batch or a mask of
    another shape → ValueError."""
    tokens_bt = np.asarray(tokens_bt)
    if tokens_bt.ndim != 2:
        raise ValueError(f"expected [B, T] token ids, got shape {tokens_bt.shape}")
    mask_bt = np.ones_like(tokens_bt, bool) if mask_bt is None else np.asarray(mask_bt).astype(bool)
    if mask_bt.shape != tokens_bt.shape:
        raise ValueError(f"mask shape {mask_bt.shape} != tokens shape {tokens_bt.shape}")
    return [
        tokenizer.decode(row[m].tolist(), skip_special_tokens=True)
        for row, m in zip(tokens_bt, mask_bt, strict=True)
    ]


def make_reward_fn(
    rm: RewardModel, policy_tokenizer, batch_size: int | None = None
) -> Callable[..., np.ndarray]:
    """Host reward callable for policy-tokenized batches (used by the sampler and the CTRL trainer).

    ``fn(prompt_tokens_bt, response_tokens_bt, prompt_mask_bt=None, response_mask_bt=None) -> rewards [B]``
    (float32 numpy). Tokens are the POLICY's ids (any padding side; masks 1 = real token, default all real).
    Each row's real tokens are decoded to text (:func:`decode_rows`), re-tokenized for the reward model, and
    scored with the jitted, bucketed :meth:`RewardModel.score_texts`.
    """

    def reward_fn(prompt_tokens_bt, response_tokens_bt, prompt_mask_bt=None, response_mask_bt=None):
        prompts = decode_rows(policy_tokenizer, prompt_tokens_bt, prompt_mask_bt)
        responses = decode_rows(policy_tokenizer, response_tokens_bt, response_mask_bt)
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return rm.score_texts(prompts, responses, batch_size).astype(np.float32)

    return reward_fn
