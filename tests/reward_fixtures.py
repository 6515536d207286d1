"""Test helper: a decoder reward model with a random scalar head on a policy checkpoint, saved to disk."""

from pathlib import Path

import jax

from infalign_jax.reward import RewardSpec, build_reward_model, save_reward_model


def save_random_head_rm(decoder_path: Path, out: Path, seed: int = 0) -> Path:
    """A ``backbone='decoder'`` reward model on ``decoder_path`` (16-token prompt/response, one bucket) whose
    head is N(0, 1) (key 1), so rewards differ between responses; saved to ``out``."""
    spec = RewardSpec(
        backbone="decoder",
        decoder_path=str(decoder_path),
        max_prompt_tokens=16,
        max_response_tokens=16,
        length_buckets=(16,),
        batch_buckets=(8,),
    )
    rm = build_reward_model(spec, seed=seed)
    net = rm.net
    net.head.out.kernel[...] = jax.random.normal(jax.random.key(1), net.head.out.kernel[...].shape)
    rm.set_net(net)
    save_reward_model(rm, out)
    return out
