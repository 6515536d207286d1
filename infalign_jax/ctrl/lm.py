"""Language-model policy and reward-model scorer for the CTRL trainer (paper Sec. 4, Alg. 1; Sec. 5 setup).

Adapts the real components to :class:`~infalign_jax.ctrl.train_step.CtrlTrainer`'s protocols
(:mod:`~infalign_jax.ctrl.problem`):

- :class:`LMPolicy` (``Policy``): ``sample`` draws S responses per prompt with the vmapped KV-cache sampler
  (:func:`infalign_jax.sampling.generate`, pure sampling at temperature 1 so the samples come from π itself),
  ``logprobs`` gives the per-token log π(y_t | x, y_<t) of those responses [P, S, L] with
  :func:`infalign_jax.models.transformer.shared_prefix_logprobs` (each prompt run once for its S responses,
  forward and backward; ``shared_prompt=False``: :func:`~infalign_jax.models.transformer.token_logprobs` of
  every ``[prompt | response]``, the same numbers up to roundoff) — under the trained params or the frozen
  reference params (the trainer calls it with both). Params are the plain nested dict ``model.params()``.
- :class:`RewardScorer` (``Scorer``): ``scorer(env, batch, samples) -> rewards_ps`` with ``env`` the reward
  model's ``nnx`` state. The policy's response tokens are decoded to text and re-tokenized for the reward
  model by a host callback (string work only, fixed output shapes); the reward network itself runs inside the
  jitted step. Prompts are tokenized for the reward model once, on the host, into the batch.
- :class:`PromptBatches`: the host batches at a data position (a cyclic window over a fixed prompt set), with
  the sorted reference rewards [P, K] looked up by prompt id in an offline calibration table
  (:mod:`~infalign_jax.ctrl.table`) for ``reference="offline"``.

:func:`reference_rewards` is the offline table's builder step (K samples of π_ref per prompt, scored by the
same scorer), so the table and the train step compute rewards identically.

Batch layout (host numpy, leading axis P = prompts; every leaf is sharded over the mesh's 'data' axis):
``prompt_bt``/``prompt_mask_bt`` int32 [P, T] (left-padded policy tokens),
``rm_prompt_bt``/``rm_prompt_mask_bt`` int32 [P, W] (left-padded reward-model tokens), ``ref_rewards_pk``
float32 [P, K] (offline mode only).
Samples: ``{"tokens": int32 [P, S, L], "mask": bool [P, S, L]}`` (mask: generated tokens up to and incl. EOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infalign_jax import padding
from infalign_jax.errors import UsageError
from infalign_jax.models import transformer as tfm
from infalign_jax.models.config import ModelConfig
from infalign_jax.models.sharding import params_specs
from infalign_jax.reward.adapter import decode_rows
from infalign_jax.reward.scoring import RewardModel
from infalign_jax.sampling import SamplingConfig, generate, pad_prompts
from infalign_jax.seeds import as_typed_key

PyTree = Any


@dataclass(frozen=True, eq=False)
class LMPolicy:
    """A decoder LM as a CTRL policy. ``params``: ``model.params()`` (nested dict of arrays).

    max_new_tokens: L, the response length budget. eos_ids: tokens ending a response (kept, mask True).
    logprob_chunk: positions per vocab-projection chunk of
    :func:`~infalign_jax.models.transformer.token_logprobs`. shared_prompt: log-probs with each prompt's
    activations computed once for its S responses
    (:func:`~infalign_jax.models.transformer.shared_prefix_logprobs`); False: every ``[prompt | response]``
    in full (the old path, kept for A/B).
    """

    config: ModelConfig
    max_new_tokens: int
    eos_ids: tuple[int, ...]
    pad_id: int = 0
    logprob_chunk: int = 256
    shared_prompt: bool = True
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        s = self.sampling
        if (s.temperature, s.top_k, s.top_p, s.min_new_tokens) != (1.0, 0, 1.0, 0):
            # The policy gradient needs samples from π itself: no temperature, truncation or EOS suppression.
            raise UsageError(f"CTRL samples from the policy itself: need SamplingConfig() defaults, got {s}")

    def param_specs(self) -> dict:
        """The ``PartitionSpec`` of every entry of ``params``: the model's sharding annotations
        (:func:`~infalign_jax.models.sharding.params_specs`), which the trainer places params by."""
        return params_specs(self.config)

    def sample(self, params, batch, rng, num_samples: int) -> dict:
        """S = ``num_samples`` responses per prompt: tokens int32 [P, S, L], mask bool [P, S, L].

        Prompt p uses key ``fold_in(rng, p)`` (sample j: ``fold_in(., j)`` inside the sampler)."""
        key = as_typed_key(rng)  # the trainer passes raw uint32 [2] key data
        p = batch["prompt_bt"].shape[0]
        keys_p = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(p))
        out = generate(
            tfm.decoder(self.config, params),
            batch["prompt_bt"],
            batch["prompt_mask_bt"],
            keys_p,
            n=num_samples,
            max_new_tokens=self.max_new_tokens,
            config=self.sampling,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
        )
        return {"tokens": out.tokens, "mask": out.mask}

    def logprobs(self, params, batch, samples) -> tuple[jax.Array, jax.Array]:
        """log π(y_t | x, y_<t) [P, S, L] of the response tokens (0 where masked) and the mask [P, S, L].

        Prompt and response are joined as ``[prompt (left-padded) | response (right-padded)]``; positions are
        ``cumsum(mask) - 1``, exactly the positions the KV-cache sampler used. With ``shared_prompt`` the
        prompt's activations are computed once for its S responses (same values up to roundoff)."""
        prompt_pt, pmask_pt = batch["prompt_bt"], batch["prompt_mask_bt"]
        tok_psl, mask_psl = samples["tokens"], samples["mask"]
        if self.shared_prompt:
            lp_psl = tfm.shared_prefix_logprobs(
                self.config, params, prompt_pt, pmask_pt, tok_psl, mask_psl, chunk=self.logprob_chunk
            )
            return jnp.where(mask_psl, lp_psl, 0.0), mask_psl
        p, s, length = tok_psl.shape
        t = prompt_pt.shape[1]
        rep = lambda x: jnp.broadcast_to(x[:, None], (p, s, t)).reshape(p * s, t)
        tokens = jnp.concatenate([rep(prompt_pt), tok_psl.reshape(p * s, length)], axis=1)
        mask = jnp.concatenate([rep(pmask_pt).astype(bool), mask_psl.reshape(p * s, length)], axis=1)
        lp = tfm.token_logprobs(self.config, params, tokens, None, mask, chunk=self.logprob_chunk)
        # lp[:, i] scores token i + 1: the response tokens are positions t .. t + L - 1.
        lp_psl = lp[:, t - 1 : t - 1 + length].reshape(p, s, length)
        return jnp.where(mask_psl, lp_psl, 0.0), mask_psl


class RewardScorer:
    """CTRL scorer over a :class:`~infalign_jax.reward.RewardModel`; ``env`` = :meth:`env` (the RM state).

    ``scorer(env, batch, samples) -> rewards_ps`` float32 [P, S]. Reward-model token widths are fixed (the
    bucket of the spec's ``max_prompt_tokens`` / ``max_response_tokens``), so the step compiles once.
    """

    def __init__(self, rm: RewardModel, policy_tokenizer):
        self.rm = rm
        self.policy_tokenizer = policy_tokenizer
        # the widths RewardModel.encode pads its (truncated) tokens to at most: same buckets, same rule
        width = lambda n: padding.bucket_size(n, rm.spec.length_buckets, overflow="multiple")
        self.prompt_width = width(rm.spec.max_prompt_tokens)
        self.response_width = width(rm.spec.max_response_tokens)

    def env(self) -> PyTree:
        """The frozen reward-model state (host arrays) the trainer places on the mesh."""
        return jax.tree.map(np.asarray, self.rm.state)

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Prompt texts -> RM tokens LEFT-padded to the fixed width: (ids, mask), int32 [P, W] each."""
        enc = self.rm.encode(list(prompts), [""] * len(prompts), batch=len(prompts))
        return _widen(enc.prompt_bt, self.prompt_width, "left"), _widen(
            enc.prompt_mask_bt, self.prompt_width, "left"
        )

    def _encode_responses_host(self, tokens_psl, mask_psl):
        p, s, length = tokens_psl.shape
        # Policy replies were learned as ``prompt + " " + reply``, so the texts usually start with a space;
        # RewardModel.encode strips it, as the training replies are.
        texts = decode_rows(
            self.policy_tokenizer, tokens_psl.reshape(p * s, length), mask_psl.reshape(p * s, length)
        )
        enc = self.rm.encode([""] * len(texts), texts, batch=len(texts))
        ids = _widen(enc.response_bl, self.response_width, "right")
        mask = _widen(enc.response_mask_bl, self.response_width, "right")
        return ids.reshape(p, s, -1), mask.reshape(p, s, -1)

    def rm_responses(self, samples) -> tuple[jax.Array, jax.Array]:
        """Policy response tokens [P, S, L] -> RM response tokens and mask [P, S, R] (host callback)."""
        p, s, _ = samples["tokens"].shape
        shape = jax.ShapeDtypeStruct((p, s, self.response_width), jnp.int32)
        return jax.pure_callback(
            self._encode_responses_host, (shape, shape), samples["tokens"], samples["mask"]
        )

    def __call__(self, env, batch, samples) -> jax.Array:
        resp_psr, rmask_psr = self.rm_responses(samples)
        p, s, r = resp_psr.shape
        w = batch["rm_prompt_bt"].shape[1]
        rep = lambda x: jnp.broadcast_to(x[:, None], (p, s, w)).reshape(p * s, w)
        net = nnx.merge(self.rm.graphdef, env)
        rewards = net(
            rep(batch["rm_prompt_bt"]),
            rep(batch["rm_prompt_mask_bt"]),
            resp_psr.reshape(p * s, r),
            rmask_psr.reshape(p * s, r),
        )
        return rewards.reshape(p, s).astype(jnp.float32)


def _widen(x: np.ndarray, width: int, side: str) -> np.ndarray:
    """RM tokens (int32) padded on ``side`` to the scorer's fixed width."""
    return padding.widen(x, width, side=side, what="reward-model tokens", dtype=np.int32)


@dataclass(frozen=True)
class EncodedPrompts:
    """A fixed prompt set, tokenized once: ids [N] (int64), policy tokens [N, T], RM tokens [N, W]."""

    ids: np.ndarray
    prompt_nt: np.ndarray
    prompt_mask_nt: np.ndarray
    rm_prompt_nw: np.ndarray
    rm_prompt_mask_nw: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def rows(self, idx) -> dict:
        """The device batch (without reference rewards) of the prompts at positions ``idx``."""
        idx = np.asarray(idx)
        return {
            "prompt_bt": self.prompt_nt[idx],
            "prompt_mask_bt": self.prompt_mask_nt[idx],
            "rm_prompt_bt": self.rm_prompt_nw[idx],
            "rm_prompt_mask_bt": self.rm_prompt_mask_nw[idx],
        }


def encode_prompts(
    ids: Sequence[int],
    prompt_tokens: Sequence[Sequence[int]],
    prompt_texts: Sequence[str],
    scorer: RewardScorer,
    max_prompt_len: int,
    pad_id: int = 0,
) -> EncodedPrompts:
    """Left-pads the policy prompts to exactly ``max_prompt_len`` and RM-tokenizes the texts."""
    if len(set(int(i) for i in ids)) != len(ids):
        raise UsageError("prompt ids must be unique")
    too_long = [i for i, p in zip(ids, prompt_tokens, strict=True) if len(p) > max_prompt_len]
    if too_long:
        raise UsageError(f"prompt id {too_long[0]} has more than max_prompt_len={max_prompt_len} tokens")
    tok, mask = pad_prompts(prompt_tokens, length_buckets=(max_prompt_len,), pad_id=pad_id)
    rm_tok, rm_mask = scorer.encode_prompts(prompt_texts)
    n = len(ids)
    return EncodedPrompts(np.asarray(ids, np.int64), tok[:n], mask[:n], rm_tok, rm_mask)


@dataclass(frozen=True)
class PromptBatches:
    """``batch(position)``: a cyclic window of ``prompts_per_step`` prompts, deterministic in the position,
    plus ``ref_rewards_pk`` from the offline table (looked up by prompt id) when one is given."""

    prompts: EncodedPrompts
    prompts_per_step: int
    table: Any = None  # infalign_jax.ctrl.table.CalibrationTable | None

    def __call__(self, position: int) -> dict:
        n = len(self.prompts)
        idx = (position * self.prompts_per_step + np.arange(self.prompts_per_step)) % n
        batch = self.prompts.rows(idx)
        if self.table is not None:
            batch["ref_rewards_pk"] = self.table.lookup(self.prompts.ids[idx]).astype(np.float32)
        return batch


def reference_rewards(
    policy: LMPolicy, scorer: RewardScorer, ref_params, env, batch, rng, k: int
) -> jax.Array:
    """Rewards [P, K] of K samples of π_ref per prompt: the offline table's rows (pure; jit it)."""
    samples = policy.sample(ref_params, batch, rng, k)
    return scorer(env, batch, samples)
