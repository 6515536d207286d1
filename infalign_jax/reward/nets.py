"""The reward nets r(x, y): a pretrained backbone + a scalar head, as flax.nnx modules.

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

Every net is called as ``net(prompt_bt, pmask_bt, response_bl, rmask_bl) -> r_b`` on RM-tokenized ids
(prompt LEFT-padded, response RIGHT-padded, masks 1 = real token; :mod:`infalign_jax.reward.scoring`).
The head scores r = head((f − μ) / σ) where μ, σ are feature statistics fixed from the training set (stored as
non-trainable state). The InfAlign trainer calibrates these rewards per prompt (paper Sec. 4), so only
their order within a prompt matters downstream. :func:`trained_filter` selects what training updates.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
from flax import nnx

from infalign_jax.reward.bert import BertEncoder, mean_pool, minilm_dir
from infalign_jax.reward.spec import RewardSpec


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


def _join_pair(prompt_bt, pmask_bt, response_bl, rmask_bl, cls_id: int, sep_id: int):
    """``[CLS] prompt [SEP] response [SEP]`` ids, mask, token types and a response-only mask, all [B,
    P+R+3]."""
    b, p = prompt_bt.shape
    r = response_bl.shape[1]
    one = jnp.ones((b, 1), jnp.int32)
    ids = jnp.concatenate([one * cls_id, prompt_bt, one * sep_id, response_bl, one * sep_id], 1)
    mask = jnp.concatenate([one, pmask_bt, one, rmask_bl, one], 1).astype(jnp.int32)
    types = jnp.concatenate([jnp.zeros((b, p + 2), jnp.int32), jnp.ones((b, r + 1), jnp.int32)], 1)
    resp_only = jnp.concatenate([jnp.zeros((b, p + 2), jnp.int32), rmask_bl, jnp.zeros((b, 1), jnp.int32)], 1)
    return ids.astype(jnp.int32), mask, types, resp_only.astype(jnp.int32)


class MiniLMRewardNet(nnx.Module):
    """BERT pair encoder + scalar head. ``net(prompt_bt, pmask_bt, response_bl, rmask_bl) -> r_b``."""

    def __init__(self, encoder: BertEncoder, spec: RewardSpec, cls_id: int, sep_id: int, *, rngs: nnx.Rngs):
        self.encoder = encoder
        self.feature_names = spec.features
        self.cls_id, self.sep_id = cls_id, sep_id
        n = encoder.config.num_layers
        self.frozen_below = 0 if spec.train_layers == -1 else n - min(spec.train_layers, n)
        d = encoder.config.hidden_size
        dim = sum(1 if f == "response_len" else d for f in spec.features)
        self.head = ScalarHead(dim, spec.head_hidden, rngs=rngs)

    def features(self, prompt_bt, pmask_bt, response_bl, rmask_bl) -> jax.Array:
        ids, mask, types, resp_only = _join_pair(
            prompt_bt, pmask_bt, response_bl, rmask_bl, self.cls_id, self.sep_id
        )
        out = {}
        if {"pair_mean", "response_mean"} & set(self.feature_names):
            h_btd = self.encoder(ids, mask, types, stop_gradient_below=self.frozen_below)
            out["pair_mean"] = mean_pool(h_btd, mask)
            out["response_mean"] = mean_pool(h_btd, resp_only)
        if "response_alone" in self.feature_names:
            b = response_bl.shape[0]
            one = jnp.ones((b, 1), jnp.int32)
            ids1 = jnp.concatenate([one * self.cls_id, response_bl.astype(jnp.int32), one * self.sep_id], 1)
            mask1 = jnp.concatenate([one, rmask_bl.astype(jnp.int32), one], 1)
            h1 = self.encoder(ids1, mask1, stop_gradient_below=self.frozen_below)
            out["response_alone"] = mean_pool(h1, mask1)
        out["response_len"] = jnp.log1p(rmask_bl.sum(-1, keepdims=True).astype(jnp.float32))
        return jnp.concatenate([out[f] for f in self.feature_names], axis=-1)

    def __call__(self, prompt_bt, pmask_bt, response_bl, rmask_bl) -> jax.Array:
        return self.head(self.features(prompt_bt, pmask_bt, response_bl, rmask_bl))


class DecoderRewardNet(nnx.Module):
    """Decoder LM backbone + scalar head on the (final-normed) hidden state of the last real token."""

    def __init__(self, decoder, spec: RewardSpec, *, rngs: nnx.Rngs):
        self.decoder = decoder
        self.frozen = spec.train_layers == 0
        self.head = ScalarHead(decoder.config.hidden_size, spec.head_hidden, rngs=rngs)

    def features(self, prompt_bt, pmask_bt, response_bl, rmask_bl) -> jax.Array:
        from infalign_jax.models import transformer as tfm

        cfg = self.decoder.config
        params = self.decoder.params()
        if self.frozen:
            params = jax.lax.stop_gradient(params)
        tokens = jnp.concatenate([prompt_bt, response_bl], 1).astype(jnp.int32)
        mask = jnp.concatenate([pmask_bt, rmask_bl], 1).astype(bool)
        h_btd = tfm.hidden_states(cfg, params, tokens, mask_bt=mask)
        # Last real token: the last response token, or the last prompt slot (prompt is left-padded).
        p = prompt_bt.shape[1]
        rlen_b = rmask_bl.astype(jnp.int32).sum(-1)
        last_b = jnp.where(rlen_b > 0, p + rlen_b - 1, p - 1)
        h_bd = jnp.take_along_axis(h_btd, last_b[:, None, None], axis=1)[:, 0]
        return tfm.rms_norm(h_bd, params["final_norm"], cfg.rms_norm_eps, cfg.norm_offset).astype(jnp.float32)

    def __call__(self, prompt_bt, pmask_bt, response_bl, rmask_bl) -> jax.Array:
        return self.head(self.features(prompt_bt, pmask_bt, response_bl, rmask_bl))


# ------------------------------------------------------------------------------------------- trained subset


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
