"""Models: parity with transformers, KV-cache decode == full forward, sharding, checkpoint I/O and its
errors."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from infalign_jax import models
from infalign_jax.cli import UsageError
from infalign_jax.mesh import make_mesh
from infalign_jax.models import functional
from infalign_jax.models.config import ModelConfig

FIX = Path(__file__).parent / "fixtures" / "models"
ARCHS = ("llama", "qwen2", "gemma3")


@functools.cache
def load(name: str):
    return models.from_pretrained(FIX / name)


@functools.cache
def jitted_forward(name: str):
    graphdef, state = nnx.split(load(name)[0])
    return graphdef, state, jax.jit(functools.partial(functional.forward, graphdef))


@pytest.mark.parametrize("name", ARCHS)
def test_logits_match_transformers(name):
    """Golden logits from transformers (eager attention) on the same tiny random checkpoint, left-padded
    row."""
    golden = np.load(FIX / f"{name}_golden.npz")
    _, state, fwd = jitted_forward(name)
    logits = np.asarray(fwd(state, jnp.asarray(golden["tokens_bt"]), None, jnp.asarray(golden["mask_bt"])))
    real = golden["mask_bt"].astype(bool)
    assert logits.shape == golden["logits_btv"].shape
    assert np.abs(golden["logits_btv"]).std() > 0.5  # non-trivial logits
    err = np.abs(logits - golden["logits_btv"])[real].max()
    assert err <= 1e-4, err


def test_fixture_configs_exercise_the_switches():
    llama, qwen, gemma = (load(n)[0].config for n in ARCHS)
    assert not llama.tie_embeddings and llama.rope.rope_type == "llama3"
    assert qwen.tie_embeddings and qwen.qkv_bias and not qwen.o_bias
    assert gemma.layer_types == ("sliding", "sliding", "full", "sliding") and gemma.sliding_window == 5
    assert gemma.qk_norm and gemma.post_norms and gemma.embed_scale and gemma.norm_offset == 1.0
    assert (
        gemma.scale == pytest.approx(24**-0.5) and gemma.rope.theta == 1e6 and gemma.rope_local.theta == 1e4
    )


@pytest.mark.parametrize("name,prompt_len,new", [("llama", 6, 5), ("gemma3", 7, 6)])
def test_cache_decode_equals_full_forward(name, prompt_len, new):
    """prefill + vmapped decode_step (2 samples sharing one prompt cache) == full forward on the
    concatenation.

    Row 1 of the prompt batch is left-padded; for gemma3 (window 5) both the prompt and the sample segment
    cross the sliding window.
    """
    graphdef, state, fwd = jitted_forward(name)
    n_samples, batch = 2, 2
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, 500, (batch, prompt_len)).astype(np.int32)
    mask = np.ones((batch, prompt_len), bool)
    mask[1, :2] = False
    prompt[1, :2] = 0
    cont = rng.integers(3, 500, (n_samples, batch, new)).astype(np.int32)

    logits_bv, prefix = jax.jit(functools.partial(functional.prefill, graphdef), static_argnums=3)(
        state, prompt, mask, new
    )
    assert len(prefix["k"]) == load(name)[0].config.num_layers
    assert prefix["k"][0].shape == (batch, 2, prompt_len, 16)
    cache = jax.vmap(lambda _: functional.init_sample_cache(graphdef, state, batch, new))(
        jnp.arange(n_samples)
    )
    step_fn = jax.jit(
        jax.vmap(functools.partial(functional.decode_step, graphdef), in_axes=(None, 0, None, None, 0))
    )
    got = [np.broadcast_to(np.asarray(logits_bv), (n_samples, *logits_bv.shape))]
    for s in range(new - 1):
        lg, cache = step_fn(state, jnp.asarray(cont[:, :, s]), s, prefix, cache)
        got.append(np.asarray(lg))
    got = np.stack(got, axis=2)  # [N, B, new, V]

    full_mask = np.concatenate([mask, np.ones((batch, new), bool)], 1)
    for i in range(n_samples):
        seq = np.concatenate([prompt, cont[i]], 1)
        ref = np.asarray(fwd(state, jnp.asarray(seq), None, jnp.asarray(full_mask)))[:, prompt_len - 1 : -1]
        np.testing.assert_allclose(got[i], ref, atol=2e-5, rtol=0)
    assert np.abs(got[0, :, 1:] - got[1, :, 1:]).max() > 1e-2  # samples really differ after their own tokens


def test_sliding_window_changes_logits():
    """The gemma3 fixture's window (5) matters: the same weights with window 1000 give different late
    logits."""
    model, _ = load("gemma3")
    golden = np.load(FIX / "gemma3_golden.npz")
    params = model.params()
    cfg_global = model.config.replace(sliding_window=1000)
    from infalign_jax.models.transformer import forward

    a = np.asarray(forward(model.config, params, golden["tokens_bt"][:1]))
    b = np.asarray(forward(cfg_global, params, golden["tokens_bt"][:1]))
    assert np.abs(a[:, :5] - b[:, :5]).max() < 1e-5  # inside the window: identical
    assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-2


def test_sharded_forward_equals_unsharded():
    mesh = make_mesh(data=2, fsdp=4)
    graphdef, state, fwd = jitted_forward("gemma3")
    shardings = models.state_shardings(state, mesh)
    specs = {"/".join(map(str, k)): s.spec for k, s in jax.tree_util.tree_leaves_with_path(shardings)}
    assert any("fsdp" in tuple(spec) for spec in specs.values())
    sharded = jax.device_put(state, shardings)
    golden = np.load(FIX / "gemma3_golden.npz")
    tokens = jnp.asarray(np.tile(golden["tokens_bt"], (2, 1)))
    mask = jnp.asarray(np.tile(golden["mask_bt"], (2, 1)))
    ref = np.asarray(fwd(state, tokens, None, mask))
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None))
    out = jax.jit(functools.partial(functional.forward, graphdef))(
        sharded, jax.device_put(tokens, data), None, jax.device_put(mask, data)
    )
    assert len(out.sharding.device_set) == 8
    # The fsdp-sharded contractions sum in another order than the 1-device program: float32 rounding
    # differences of a few ulps of the largest logit (|logit| up to 32 here, an ulp 3.8e-6). Measured 1.3e-5
    # on an Intel Xeon (3.5 ulps), below 1e-5 on AMD EPYC; the bound is 8 ulps of the logit scale.
    scale = np.abs(ref).max()
    assert np.abs(np.asarray(out) - ref).max() <= 8 * np.finfo(np.float32).eps * scale


def _copy_fixture(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIX / name, dst)
    return dst


def _rewrite(path: Path, fn) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_generation_config_eos_ids_are_added(tmp_path):
    """transformers' generate stops at generation_config.json's EOS ids (Gemma 3 instruct lists <end_of_turn>
    only there): they are appended to config.json's; a malformed one is a UsageError."""
    path = _copy_fixture("llama", tmp_path)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    assert models.from_pretrained(path)[0].config.eos_token_ids == (2, 7)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": "</s>"}))
    with pytest.raises(UsageError, match="eos_token_id must be token ids"):
        models.from_pretrained(path)


def test_missing_tensor_is_named(tmp_path):
    path = _copy_fixture("qwen2", tmp_path)
    _rewrite(path, lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(UsageError, match=r"missing tensor 'model\.layers\.1\.self_attn\.k_proj\.bias'"):
        models.from_pretrained(path)


def test_mismatched_tensor_is_named(tmp_path):
    path = _copy_fixture("llama", tmp_path)
    _rewrite(
        path, lambda t: t.update({"model.layers.2.mlp.down_proj.weight": np.zeros((64, 95), np.float32)})
    )
    with pytest.raises(
        UsageError, match=r"'model\.layers\.2\.mlp\.down_proj\.weight' has shape \(64, 95\).*\(64, 96\)"
    ):
        models.from_pretrained(path)


def test_unexpected_tensor_is_named(tmp_path):
    path = _copy_fixture("llama", tmp_path)
    _rewrite(path, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}))
    with pytest.raises(UsageError, match=r"unexpected tensor 'model\.layers\.0\.self_attn\.q_proj\.bias'"):
        models.from_pretrained(path)


def test_untied_model_needs_lm_head(tmp_path):
    path = _copy_fixture("llama", tmp_path)
    _rewrite(path, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(UsageError, match=r"missing tensor 'lm_head\.weight'"):
        models.from_pretrained(path)


def test_unsupported_architecture(tmp_path):
    path = _copy_fixture("llama", tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="unsupported model_type 'gpt2'"):
        models.from_pretrained(path)
    with pytest.raises(UsageError, match="config.json not found"):
        models.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_save_load_roundtrip_exact(name, tmp_path):
    model, tok = load(name)
    out = models.save_pretrained(model, tok, tmp_path / "saved")
    model2, tok2 = models.from_pretrained(out)
    assert model2.config == model.config
    for a, b in zip(jax.tree.leaves(model.params()), jax.tree.leaves(model2.params()), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the written safetensors use transformers' names and layout: same tensors as the fixture
    orig, saved = load_file(str(FIX / name / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(saved) == set(orig)
    for key, value in orig.items():
        np.testing.assert_array_equal(saved[key], value)
    if tok is not None:
        text = "Human: What is the capital of France?"
        assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    # no silent overwrite
    with pytest.raises(UsageError, match="already exists"):
        models.save_pretrained(model, None, out)
    assert (out / "model.safetensors").exists()


def test_sharded_index_checkpoint(tmp_path):
    """A ``model.safetensors.index.json`` + two shards loads to the same weights."""
    path = tmp_path / "sharded"
    path.mkdir()
    shutil.copy(FIX / "llama" / "config.json", path)
    tensors = load_file(str(FIX / "llama" / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(path / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model, tok = models.from_pretrained(path)
    assert tok is None
    for a, b in zip(jax.tree.leaves(model.params()), jax.tree.leaves(load("llama")[0].params()), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_hf_config_roundtrip():
    for name in ARCHS:
        cfg = load(name)[0].config
        assert ModelConfig.from_hf_config(cfg.to_hf_config()) == cfg
    gemma = ModelConfig.gemma3(num_layers=6)
    assert gemma.layer_types == ("sliding",) * 5 + ("full",)
    with pytest.raises(UsageError, match="num_kv_heads"):
        ModelConfig.llama(num_heads=4, num_kv_heads=3)


def test_gemma3_configs_read_as_transformers_does():
    """The multimodal wrapper of google/gemma-3-4b-it lists six text keys; the rest are transformers'
    Gemma3TextConfig defaults (8 heads, 4 KV heads, head_dim 256, vocab 262208); its top-level EOS ids win.
    attn_logit_softcapping is ignored, as transformers' Gemma 3 attention ignores it, and a config that
    soft-caps attention cannot be exported."""
    text = {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "model_type": "gemma3_text",
        "num_hidden_layers": 34,
    }
    text.update(rope_scaling={"factor": 8.0, "rope_type": "linear"}, sliding_window=1024)
    cfg = ModelConfig.from_hf_config({"model_type": "gemma3", "eos_token_id": [1, 106], "text_config": text})
    got = (cfg.vocab_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.query_scale, cfg.eos_token_ids)
    assert got == (262_208, 8, 4, 256, 256**-0.5, (1, 106))
    assert (cfg.rope.rope_type, cfg.rope.factor, cfg.rope_local.rope_type) == ("linear", 8.0, "default")
    assert cfg.layer_types == (("sliding",) * 5 + ("full",)) * 5 + ("sliding",) * 4
    hf = load("gemma3")[0].config.to_hf_config()
    assert ModelConfig.from_hf_config({**hf, "attn_logit_softcapping": 50.0}).attn_logit_softcap is None
    with pytest.raises(UsageError, match="attn_logit_softcap has no Hugging Face equivalent"):
        ModelConfig.gemma3(num_layers=6, attn_logit_softcap=50.0).to_hf_config()


def test_greedy_decode_matches_transformers_generate():
    """prefill + decode_step greedy loop reproduces transformers' generate(do_sample=False) tokens."""
    golden = json.loads((FIX / "llama_greedy.json").read_text())
    graphdef, state, _ = jitted_forward("llama")
    tok = load("llama")[1]
    enc = tok(golden["prompts"], padding=True)
    assert enc["input_ids"] == golden["prompt_tokens_bt"]  # the fixture tokenizer pads on the left
    prompt = jnp.asarray(golden["prompt_tokens_bt"], jnp.int32)
    mask = jnp.asarray(golden["prompt_mask_bt"], bool)
    new = golden["max_new_tokens"]
    logits, prefix = functional.prefill(graphdef, state, prompt, mask, new)
    cache = functional.init_sample_cache(graphdef, state, prompt.shape[0], new)
    step_fn = jax.jit(functools.partial(functional.decode_step, graphdef))
    out = []
    for s in range(new):
        token = jnp.argmax(logits, -1).astype(jnp.int32)
        out.append(token)
        if s + 1 < new:
            logits, cache = step_fn(state, token, s, prefix, cache)
    assert np.stack(out, 1).tolist() == golden["greedy_new_tokens_bt"]


def test_bfloat16_load():
    """dtype='bfloat16' stores bf16 params, keeps float32 logits, and stays near the float32 model."""
    model, _ = models.from_pretrained(FIX / "llama", dtype="bfloat16")
    assert {leaf.dtype for leaf in jax.tree.leaves(model.params())} == {jnp.dtype(jnp.bfloat16)}
    golden = np.load(FIX / "llama_golden.npz")
    logits = np.asarray(model(golden["tokens_bt"][:1]))
    assert logits.dtype == np.float32
    ref = golden["logits_btv"][:1]
    assert np.abs(logits - ref).max() < 0.03 * np.abs(ref).max()  # measured 0.015 relative
    assert (logits.argmax(-1) == ref.argmax(-1)).mean() >= 0.75


def test_token_logprobs_equals_log_softmax_of_forward():
    """Chunked, checkpointed log-probs (and their gradients) == log_softmax of the full logits."""
    model, _ = load("qwen2")
    golden = np.load(FIX / "qwen2_golden.npz")
    tokens, mask = jnp.asarray(golden["tokens_bt"]), jnp.asarray(golden["mask_bt"])
    params = model.params()
    from infalign_jax.models.transformer import forward, token_logprobs

    def ref(p):
        logp = jax.nn.log_softmax(forward(model.config, p, tokens, None, mask)[:, :-1], -1)
        return jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]

    def ours(p):
        return token_logprobs(model.config, p, tokens, None, mask, chunk=6)  # 15 positions: 3 chunks, padded

    weights = mask[:, 1:].astype(jnp.float32)

    def loss_and_values(fn):
        return jax.grad(lambda p: (jnp.sum(fn(p) * weights), fn(p)), has_aux=True)

    @jax.jit
    def both(p):  # one compilation for both paths
        return loss_and_values(ours)(p), loss_and_values(ref)(p)

    (g_ours, v_ours), (g_ref, v_ref) = both(params)
    np.testing.assert_allclose(np.asarray(v_ours), np.asarray(v_ref), atol=1e-5, rtol=0)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)


def test_top_level_rope_theta_fills_rope_parameters_without_one():
    """transformers copies the top-level rope_theta (Gemma 3: also rope_local_base_freq) into rope
    parameters that lack one; we used the built-in defaults instead (Llama 1e4 instead of 5e5)."""
    hf = load("llama")[0].config.to_hf_config()
    hf.update(rope_theta=500000.0, rope_parameters={"rope_type": "default"})
    cfg = ModelConfig.from_hf_config(hf)
    assert (cfg.rope.theta, cfg.rope.rope_type) == (500000.0, "default")
    g = load("gemma3")[0].config.to_hf_config()
    g = {**g, "rope_theta": 5e5, "rope_local_base_freq": 2e4}
    g["rope_parameters"] = {
        "full_attention": {"rope_type": "linear", "factor": 8.0},
        "sliding_attention": {"rope_type": "default"},
    }
    cfg = ModelConfig.from_hf_config(g)
    assert (cfg.rope.theta, cfg.rope.factor, cfg.rope_local.theta) == (5e5, 8.0, 2e4)


def test_damaged_weight_files_are_one_usage_error_naming_the_file(tmp_path):
    """Were tracebacks: an empty or truncated GGUF (mmap / struct errors), a git-lfs pointer saved as
    model.safetensors, an index naming a tensor its shard lacks (SafetensorError)."""
    from infalign_jax.models.gguf_io import GGUFFile

    empty, trunc = tmp_path / "empty.gguf", tmp_path / "trunc.gguf"
    empty.write_bytes(b"")
    trunc.write_bytes(b"GGUF\x03\x00\x00\x00")  # magic + version, then nothing
    for path in (empty, trunc):
        with pytest.raises(UsageError, match=rf"{path.name}: damaged or truncated GGUF file"):
            GGUFFile(path)
    with pytest.raises(UsageError, match="not a GGUF file"):  # a plain bad file keeps its own message
        (tmp_path / "text.gguf").write_bytes(b"hello world, not gguf")
        GGUFFile(tmp_path / "text.gguf")
    lfs = _copy_fixture("llama", tmp_path / "lfs")
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n"
    (lfs / "model.safetensors").write_text(pointer)
    with pytest.raises(UsageError, match=r"safetensors is not a readable safetensors file \(a git-lfs"):
        models.from_pretrained(lfs)
    sharded = _copy_fixture("llama", tmp_path / "sharded")
    names = list(load_file(str(sharded / "model.safetensors")))
    assert "model.norm.weight" in names
    index = {"weight_map": {name: "model.safetensors" for name in names}}  # still lists model.norm.weight
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    _rewrite(sharded, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(UsageError, match=r"cannot read tensor 'model\.norm\.weight' from .*safetensors"):
        models.from_pretrained(sharded)
