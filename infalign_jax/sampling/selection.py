"""Inference-time procedures on top of the sampler: best-of-N, worst-of-N, or any selection rule.

A procedure T (paper Sec. 2-3) draws N samples from the policy and returns one of them chosen by a reward:
best-of-N keeps the highest reward (its output CDF is F^N), worst-of-N the lowest (1 - (1 - F)^N). InfAlign
aligns the policy for the win rate of T(π) — these functions are T itself, used at deployment and in
evaluation.

Reward functions follow one array protocol (a jittable function, or any host callable on numpy arrays):

    reward_fn(prompt_bt, prompt_mask_bt, tokens_bnl, mask_bnl) -> rewards [B, N]

with left-padded prompts (mask 1 = real token) and right-padded responses (mask True = real token). A function
of strings (e.g. a reward model with its own tokenizer) is adapted with :func:`text_reward_fn`.

A selection rule maps rewards ``[B, N]`` to the chosen index ``[B]``; ties go to the lowest index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

from infalign_jax.errors import UsageError
from infalign_jax.sampling.filters import SamplingConfig
from infalign_jax.sampling.sampler import SampleOutput, Sampler

RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
SelectionRule = Callable[[np.ndarray], np.ndarray]


def argmax_rule(rewards_bn) -> np.ndarray:
    """Best-of-N: index of the highest reward."""
    return np.argmax(np.asarray(rewards_bn), axis=-1)


def argmin_rule(rewards_bn) -> np.ndarray:
    """Worst-of-N: index of the lowest reward."""
    return np.argmin(np.asarray(rewards_bn), axis=-1)


def kth_rule(k: int) -> SelectionRule:
    """The k-th best of N (k = 1: best-of-N, k = N: worst-of-N); stable order, so ties go to the lowest
    index."""
    if int(k) != k or k < 1:
        raise UsageError(f"k must be an integer >= 1, got {k}")

    def rule(rewards_bn) -> np.ndarray:
        r = np.asarray(rewards_bn, np.float64)  # -r of unsigned or bool rewards would wrap / fail
        if k > r.shape[-1]:
            raise UsageError(f"kth_rule(k={k}) needs at least k samples, got N={r.shape[-1]}")
        # the k-th largest VALUE, then the lowest index holding it: kth_rule(1) is argmax_rule and kth_rule(N)
        # argmin_rule, ties included (a stable argsort of −r gave the HIGHEST index of a tie at the bottom)
        kth_value = -np.sort(-r, axis=-1)[..., k - 1 : k]
        return np.argmax(r == kth_value, axis=-1)

    return rule


class Selection(NamedTuple):
    """The response T(π) returns for each of B prompts, plus every candidate.

    index: int [B] chosen sample; tokens [B, L], mask [B, L], length [B], reward [B]: the chosen response.
    rewards: float [B, N] of all candidates; candidates: the full :class:`SampleOutput` ([B, N, L] arrays).
    """

    index: np.ndarray
    tokens: np.ndarray
    mask: np.ndarray
    length: np.ndarray
    reward: np.ndarray
    rewards: np.ndarray
    candidates: SampleOutput


def select(candidates: SampleOutput, rewards_bn, rule: SelectionRule = argmax_rule) -> Selection:
    """Applies ``rule`` to rewards [B, N] (any real or bool dtype; float64 from here on) and gathers the
    chosen candidate of each prompt."""
    rewards_bn = np.asarray(rewards_bn, np.float64)
    B, N = np.shape(candidates.lengths)
    if rewards_bn.shape != (B, N):
        raise UsageError(f"reward function returned shape {rewards_bn.shape}, expected [B, N] = {(B, N)}")
    if not np.all(np.isfinite(rewards_bn)):
        raise UsageError("reward function returned non-finite rewards")
    index = np.asarray(rule(rewards_bn)).astype(np.int64)
    if index.shape != (B,) or index.min() < 0 or index.max() >= N:
        raise UsageError(f"selection rule returned {index!r}; expected {B} indices in [0, {N})")
    rows = np.arange(B)
    return Selection(
        index=index,
        tokens=np.asarray(candidates.tokens)[rows, index],
        mask=np.asarray(candidates.mask)[rows, index],
        length=np.asarray(candidates.lengths)[rows, index],
        reward=rewards_bn[rows, index],
        rewards=rewards_bn,
        candidates=candidates,
    )


def select_of_n(
    sampler: Sampler,
    prompts: Sequence[Sequence[int]],
    n: int,
    reward_fn: RewardFn,
    rule: SelectionRule,
    *,
    max_new_tokens: int,
    seed: int | None = None,
    key: jax.Array | None = None,
    config: SamplingConfig = SamplingConfig(),
) -> Selection:
    """Draws n samples per prompt with ``sampler``, scores them with ``reward_fn`` and keeps the one ``rule``
    picks."""
    candidates = sampler.sample(
        prompts, n=n, max_new_tokens=max_new_tokens, seed=seed, key=key, config=config
    )
    prompt_bt, prompt_mask_bt = (x[: len(prompts)] for x in sampler.pad(prompts))
    rewards_bn = reward_fn(prompt_bt, prompt_mask_bt, candidates.tokens, candidates.mask)
    return select(candidates, np.asarray(rewards_bn, dtype=np.float64), rule)


def best_of_n(sampler: Sampler, prompts, n: int, reward_fn: RewardFn, **kw) -> Selection:
    """Best-of-N: the highest-reward of n samples per prompt (keyword args as in :func:`select_of_n`)."""
    return select_of_n(sampler, prompts, n, reward_fn, argmax_rule, **kw)


def worst_of_n(sampler: Sampler, prompts, n: int, reward_fn: RewardFn, **kw) -> Selection:
    """Worst-of-N: the lowest-reward of n samples per prompt (keyword args as in :func:`select_of_n`)."""
    return select_of_n(sampler, prompts, n, reward_fn, argmin_rule, **kw)


def text_reward_fn(score_texts: Callable[[list[str], list[str]], Sequence[float]], tokenizer) -> RewardFn:
    """Adapts ``score_texts(prompts: list[str], responses: list[str]) -> rewards`` (flat, B*N pairs) to the
    array protocol by decoding tokens with the package's one decoding step
    (:func:`infalign_jax.reward.adapter.decode_rows`: padding and everything after EOS dropped)."""
    from infalign_jax.reward.adapter import decode_rows

    def reward_fn(prompt_bt, prompt_mask_bt, tokens_bnl, mask_bnl):
        tokens_bnl, mask_bnl = np.asarray(tokens_bnl), np.asarray(mask_bnl)
        B, N, L = tokens_bnl.shape
        prompts = decode_rows(tokenizer, prompt_bt, prompt_mask_bt)
        flat_p = [prompts[b] for b in range(B) for _ in range(N)]
        flat_r = decode_rows(tokenizer, tokens_bnl.reshape(B * N, L), mask_bnl.reshape(B * N, L))
        return np.asarray(score_texts(flat_p, flat_r), dtype=np.float64).reshape(B, N)

    return reward_fn
