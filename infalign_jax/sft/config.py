"""The checks of an SFT config: every value the run would fail on later, before anything is loaded or
written."""

from __future__ import annotations

import jax
import ml_collections

from infalign_jax import config_checks as cc
from infalign_jax.errors import UsageError
from infalign_jax.seeds import check_seed
from infalign_jax.sft.model import model_config

INTEGER_FIELDS = ("batch_size", "num_steps", "log_every", "eval_every", "checkpoint_every")
INTEGER_FIELDS += ("keep_checkpoints",)


def _is_int(v, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


# Numeric fields checked first (config_checks.number bounds): learning_rate=nan used to train to NaN weights
# and export them.
CONFIG_NUMBERS = tuple((name, cc.COUNT) for name in INTEGER_FIELDS) + (
    ("learning_rate", cc.POSITIVE),
    ("end_lr_fraction", cc.NON_NEGATIVE),
    ("weight_decay", cc.NON_NEGATIVE),
    ("b1", cc.ADAM_BETA),
    ("b2", cc.ADAM_BETA),
    ("grad_clip", cc.POSITIVE),
    ("num_samples", dict(integer=True, ge=0)),
)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`UsageError` for any config value the run would fail on later: called before anything is
    loaded or written."""
    from infalign_jax.data.tokenizer import MIN_VOCAB_SIZE
    from infalign_jax.sampling import SamplingConfig

    cc.numbers(config, CONFIG_NUMBERS)
    check_seed(config.seed)
    n_data = jax.device_count()
    if config.batch_size % n_data:
        raise UsageError(f"batch_size {config.batch_size} is not a multiple of the {n_data} devices")
    if not _is_int(config.warmup_steps, 0):
        raise UsageError(f"warmup_steps must be an integer >= 0, got {config.warmup_steps!r}")
    buckets = config.buckets
    if not isinstance(buckets, tuple | list) or not buckets or not all(_is_int(b, 1) for b in buckets):
        raise UsageError(f"buckets must be a non-empty tuple of positive lengths, got {buckets!r}")
    if max(buckets) != config.max_len:
        raise UsageError(f"the largest bucket {max(buckets)} must equal max_len {config.max_len}")
    if not (_is_int(config.max_prompt_len, 2) and config.max_prompt_len < config.max_len):
        raise UsageError(
            f"need 2 <= max_prompt_len < max_len, got max_prompt_len {config.max_prompt_len!r}, "
            f"max_len {config.max_len}"
        )
    if not config.tokenizer_path and not _is_int(config.vocab_size, MIN_VOCAB_SIZE):
        raise UsageError(f"vocab_size must be an integer >= {MIN_VOCAB_SIZE}, got {config.vocab_size!r}")
    model_config(config, config.vocab_size)  # the model block's own checks (heads, architecture, ...)
    if not config.tokenizer_path:
        cc.check_array_bytes(
            "the float32 [B, T, V] logits",
            4 * config.batch_size * config.max_len * config.vocab_size,
            "batch_size x max_len x vocab_size",
        )
    if config.num_samples > 0:
        if not _is_int(config.sample_max_new_tokens, 1):
            raise UsageError(
                f"sample_max_new_tokens must be an integer >= 1, got {config.sample_max_new_tokens!r}"
            )
        SamplingConfig(temperature=config.sample_temperature, top_p=config.sample_top_p)
