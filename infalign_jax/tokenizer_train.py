"""Byte-level BPE tokenizer for the embedded HH policy, trained with the ``tokenizers`` library.

Trained on the HH ``train`` split only (prompts and both replies), so the held-out split stays unseen. Special
tokens ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2; the role markers ``"\\n\\nHuman:"`` /
``"\\n\\nAssistant:"`` are single added tokens (the last two ids); encoding prepends ``<bos>`` (a
post-processor), decoding is byte-level. Saved as ``tokenizer.json`` + ``tokenizer_config.json`` so
``transformers.AutoTokenizer.from_pretrained(dir)`` loads it (no torch, no remote code).

CLI::

    python -m infalign_jax.tokenizer_train --data-dir runs/data --out runs/tokenizer [--vocab-size 4096]

``--out`` must not exist yet or be an empty directory; ``--overwrite`` replaces an earlier tokenizer written
there. Anything else at ``--out`` is never touched (exit 2).
"""

from __future__ import annotations

from collections.abc import Sequence

from infalign_jax.cli import ArgumentParser, run_main
from infalign_jax.data.tokenizer import train_hh_tokenizer


def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m infalign_jax.tokenizer_train", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data-dir", default="runs/data", help="HH TFDS data dir (built by infalign_jax.data.hh)"
    )
    ap.add_argument("--out", default="runs/tokenizer", help="output directory (must not hold other files)")
    ap.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size (default 4096)")
    ap.add_argument("--min-frequency", type=int, default=2, help="min pair count for a merge (>= 0)")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier tokenizer in --out")
    args = ap.parse_args(argv)
    out = train_hh_tokenizer(args.data_dir, args.out, args.vocab_size, args.min_frequency, args.overwrite)
    print(f"wrote {out / 'tokenizer.json'}")
    return 0


if __name__ == "__main__":
    run_main(main)
