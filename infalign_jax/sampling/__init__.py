"""Jitted, vmapped best-of-N sampler (prefill once per prompt, N samples share the prompt KV cache).

- :mod:`.filters`: :class:`SamplingConfig`, temperature / top-k / top-p filters, fast categorical sampling.
- :mod:`.sampler`: :func:`generate` (pure) and :class:`Sampler` (buckets, mesh, numpy results).
- :mod:`.selection`: :func:`best_of_n`, :func:`worst_of_n`, :func:`select_of_n` with any selection rule.
"""

from infalign_jax.sampling.filters import (
    SamplingConfig,
    filter_logits,
    model_logprob,
    sample_categorical,
    sample_token,
    top_k_filter,
    top_p_filter,
)
from infalign_jax.sampling.sampler import DEFAULT_LENGTH_BUCKETS, SampleOutput, Sampler, generate, pad_prompts
from infalign_jax.sampling.selection import (
    Selection,
    argmax_rule,
    argmin_rule,
    best_of_n,
    kth_rule,
    select,
    select_of_n,
    text_reward_fn,
    worst_of_n,
)

__all__ = [
    "DEFAULT_LENGTH_BUCKETS",
    "SampleOutput",
    "Sampler",
    "SamplingConfig",
    "Selection",
    "argmax_rule",
    "argmin_rule",
    "best_of_n",
    "filter_logits",
    "generate",
    "kth_rule",
    "model_logprob",
    "pad_prompts",
    "sample_categorical",
    "sample_token",
    "select",
    "select_of_n",
    "text_reward_fn",
    "top_k_filter",
    "top_p_filter",
    "worst_of_n",
]
