"""The SFT model: the :class:`~infalign_jax.models.ModelConfig` a config's ``model`` block describes."""

from __future__ import annotations

import ml_collections
from flax import nnx


def model_config(config: ml_collections.ConfigDict, vocab_size: int):
    """The :class:`~infalign_jax.models.ModelConfig` of ``config``'s ``model`` block for a ``vocab_size``
    tokenizer."""
    from infalign_jax.models import ModelConfig, RopeConfig

    m = config.model
    return ModelConfig(
        arch=m.arch,
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        head_dim=m.head_dim,
        max_position_embeddings=config.max_len,
        rope=RopeConfig(theta=m.rope_theta),
        tie_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def abstract_model(config: ml_collections.ConfigDict, vocab_size: int):
    """``(graphdef, abstract state)`` of the model ``config`` describes (shapes only, nothing allocated)."""
    from infalign_jax.models import Transformer

    return nnx.split(nnx.eval_shape(lambda: Transformer(model_config(config, vocab_size), rngs=nnx.Rngs(0))))
