"""The samples an SFT run writes into ``eval.json``: greedy and temperature replies to held-out prompts."""

from __future__ import annotations

import ml_collections


def eval_samples(model, tokenizer, eval_src, config: ml_collections.ConfigDict) -> list[dict]:
    """Greedy and temperature samples for the first ``num_samples`` held-out prompts (the best-of-N
    :class:`~infalign_jax.sampling.Sampler` with n = 1)."""
    from infalign_jax.data.encoders import prompt_encoder
    from infalign_jax.reward.adapter import decode_rows
    from infalign_jax.sampling import Sampler, SamplingConfig

    if config.num_samples <= 0 or len(eval_src) == 0:
        return []
    enc = prompt_encoder(tokenizer, config.max_prompt_len)
    recs = [eval_src[i] for i in range(min(config.num_samples, len(eval_src)))]
    prompts = [enc(r)["prompt_tokens"].tolist() for r in recs]
    sampler = Sampler(model, eos_ids=(2,), pad_id=0)
    outs = {}
    for name, sc in (
        ("greedy", SamplingConfig(temperature=0.0)),
        ("sampled", SamplingConfig(temperature=config.sample_temperature, top_p=config.sample_top_p)),
    ):
        o = sampler.sample(
            prompts, n=1, max_new_tokens=config.sample_max_new_tokens, seed=config.seed, config=sc
        )
        outs[name] = decode_rows(tokenizer, o.tokens[: len(recs), 0], o.mask[: len(recs), 0])
    return [
        {
            "id": r["id"],
            "prompt_tail": tokenizer.decode(p, skip_special_tokens=True)[-300:],
            "chosen": r["chosen"],
            "greedy": outs["greedy"][i],
            "sampled": outs["sampled"][i],
        }
        for i, (r, p) in enumerate(zip(recs, prompts, strict=True))
    ]
