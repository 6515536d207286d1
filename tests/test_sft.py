"""SFT end to end on the real HH data with a tiny model: loss goes down, export reloads with identical logits,
same seed -> same parameters, a resumed run equals an uninterrupted one, finished runs are not overwritten."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from infalign_jax.cli import UsageError, run_main
from infalign_jax.cli import load_config_file as load_config
from infalign_jax.data.hh import build_hh
from infalign_jax.models import from_pretrained
from infalign_jax.sft import load_checkpoint, main, masked_lm_loss, train
from infalign_jax.tokenizer_train import train_hh_tokenizer


@pytest.fixture(scope="module")
def prepared(hh_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    build_hh(hh_dir, root / "data")
    train_hh_tokenizer(root / "data", root / "tok", vocab_size=320)
    return root


def tiny(prepared, **kw):
    c = load_config("configs/sft_hh_tiny.py")
    c.data_dir = str(prepared / "data")
    c.tokenizer_path = str(prepared / "tok")
    c.model.update(
        hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16
    )
    c.update(max_len=32, max_prompt_len=16, buckets=(32,), batch_size=8, num_steps=6, learning_rate=1e-2)
    c.update(warmup_steps=0, end_lr_fraction=1.0, log_every=1, eval_every=100, checkpoint_every=3)
    c.update(num_samples=0, seed=3)
    c.update(**kw)
    return c


def test_masked_lm_loss_matches_hand_computation():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    tokens = jnp.array([[0, 1, 2]])
    nll, n = masked_lm_loss(logits, tokens, jnp.array([[0, 1, 1]]))
    assert n == 2 and nll == pytest.approx(-np.log(0.25) - np.log(0.1), rel=1e-6)
    nll, n = masked_lm_loss(logits, tokens, jnp.array([[1, 0, 1]]))  # the first token is never a target
    assert n == 1 and nll == pytest.approx(-np.log(0.1), rel=1e-6)


def test_sft_trains_exports_reloads_and_refuses_overwrite(prepared, tmp_path):
    wd = tmp_path / "run"
    res = train(tiny(prepared, num_samples=2, sample_max_new_tokens=6), str(wd))
    losses = [
        json.loads(ln)["train_loss"]
        for ln in (wd / "metrics.jsonl").read_text().splitlines()
        if "train_loss" in ln
    ]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5  # ln(320) = 5.77 at init
    saved = json.loads((wd / "eval.json").read_text())
    assert saved["eval_perplexity"] == pytest.approx(np.exp(saved["eval_loss"]))
    assert saved["eval_loss"] < np.log(320) and saved["steps"] == 6 and saved["eval_examples"] > 200
    assert len(saved["samples"]) == 2 and all(isinstance(s["greedy"], str) for s in saved["samples"])
    assert list((wd / "tb").iterdir())  # TensorBoard events

    model, tok = from_pretrained(wd / "export")
    assert len(tok) == 320 and tok.eos_token_id == 2
    ids = tok("\n\nHuman: how do I pick a lock?\n\nAssistant:")["input_ids"]
    tokens = jnp.asarray([ids], jnp.int32)
    # Reference: the trained parameters exactly as the trainer left them (its last Orbax checkpoint).
    ref, meta = load_checkpoint(wd, tiny(prepared))
    assert meta["step"] == 6 and meta["loader"] == {"epoch": 0, "index": 6}
    np.testing.assert_array_equal(np.asarray(model(tokens)), np.asarray(ref(tokens)))

    with pytest.raises(UsageError, match="finished export"):
        train(tiny(prepared), str(wd))
    with pytest.raises(SystemExit) as e:
        run_main(main, ["--config", "configs/sft_hh_tiny.py", "--workdir", str(wd)])
    assert e.value.code == 2
    assert res["eval_loss"] == saved["eval_loss"]


def test_same_seed_same_params_and_resume_equals_uninterrupted(prepared, tmp_path):
    train(tiny(prepared), str(tmp_path / "a"))
    # Interrupted run: 3 steps (checkpoint at 3), drop the export, then continue to 6 from the checkpoint.
    train(tiny(prepared, num_steps=3), str(tmp_path / "b"))
    shutil.rmtree(tmp_path / "b" / "export")
    res = train(tiny(prepared), str(tmp_path / "b"))
    assert res["steps"] == 6
    a = load_file(tmp_path / "a" / "export" / "model.safetensors")
    b = load_file(tmp_path / "b" / "export" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert jax.device_count() == 8  # the batch really was sharded over the 8 test devices
