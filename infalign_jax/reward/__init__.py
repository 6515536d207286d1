"""Reward models: a BERT (all-MiniLM-L6-v2) or decoder backbone + scalar head, Bradley–Terry training.

Public API: :class:`RewardSpec`, :class:`RewardModel` (``score``, ``score_texts``, ``encode``),
:func:`build_reward_model`, :func:`load_reward_model`, :func:`save_reward_model`, :func:`make_reward_fn`,
:func:`weights_digest` (content hash of a saved model).
"""

from infalign_jax.reward.model import (
    RewardModel,
    RewardSpec,
    build_reward_model,
    load_reward_model,
    make_reward_fn,
    save_reward_model,
    weights_digest,
)

__all__ = [
    "RewardModel",
    "RewardSpec",
    "build_reward_model",
    "load_reward_model",
    "make_reward_fn",
    "save_reward_model",
    "weights_digest",
]
