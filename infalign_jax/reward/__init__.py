"""Reward models: a BERT (all-MiniLM-L6-v2) or decoder backbone + scalar head, Bradley–Terry training.

Modules: ``spec`` (:class:`RewardSpec`), ``nets`` (backbone + head modules), ``scoring``
(:class:`RewardModel`, text/token encoding, :func:`make_reward_fn`), ``storage`` (save / load / digest),
``bradley_terry`` (loss, head fitting, accuracy), ``training`` (a whole reward-model training run), ``bert``
(the MiniLM encoder), ``policy_tokens`` (the CTRL policy's token layout).

Public API: :class:`RewardSpec`, :class:`RewardModel` (``score``, ``score_texts``, ``encode``),
:func:`build_reward_model`, :func:`load_reward_model`, :func:`save_reward_model`, :func:`make_reward_fn`,
:func:`weights_digest` (content hash of a saved model).
"""

from infalign_jax.reward.adapter import make_reward_fn
from infalign_jax.reward.scoring import RewardModel, build_reward_model
from infalign_jax.reward.spec import RewardSpec
from infalign_jax.reward.storage import load_reward_model, save_reward_model, weights_digest

__all__ = [
    "RewardModel",
    "RewardSpec",
    "build_reward_model",
    "load_reward_model",
    "make_reward_fn",
    "save_reward_model",
    "weights_digest",
]
