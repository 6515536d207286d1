"""The shared-prompt log-probabilities of the CTRL update (issue 17, item 1): each prompt run once for its S
responses (``transformer.shared_prefix_logprobs``) == every ``[prompt | response]`` run in full
(``transformer.token_logprobs``), values and gradients w.r.t. every parameter, on the tiny Llama / Qwen2 /
Gemma 3 fixtures (Gemma: sliding window 5 crossing the prompt/response boundary, QK-norm, post-norms); and
one CTRL train step with ``LMPolicy(shared_prompt=True)`` == ``shared_prompt=False``.

Prompts as the trainer makes them: ``<bos>`` + the last T - 1 tokens of a longer prompt (left-truncated), and
shorter prompts left-padded to T by ``sampling.pad_prompts`` (which also adds a padding row of one pad token);
responses right-padded after an EOS at different lengths (1 to L tokens).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from infalign_jax import models
from infalign_jax.ctrl.lm import LMPolicy
from infalign_jax.ctrl.objective import LossConfig
from infalign_jax.ctrl.train_step import CtrlTrainer, StepConfig
from infalign_jax.ctrl.transforms import parse_transform
from infalign_jax.mesh import make_mesh
from infalign_jax.models import transformer as tfm
from infalign_jax.sampling import pad_prompts

FIX = Path(__file__).parent / "fixtures" / "models"
T, S, L = 9, 3, 7  # prompt width, samples per prompt, response length (Gemma's window is 5)
EOS, PAD, BOS = 2, 0, 1


@functools.cache
def load(name: str):
    model = models.from_pretrained(FIX / name)[0]
    return model.config, jax.tree.map(jnp.asarray, model.params())


def prompt_batch(seed: int = 0):
    """4 prompts [4, T]: left-truncated (bos + last T-1 of 20 tokens), 5 tokens, 2 tokens, pad_prompts'
    padding row (one pad token)."""
    rng = np.random.default_rng(seed)
    long = rng.integers(3, 400, 20).tolist()
    prompts = [[BOS, *long[-(T - 1) :]], [BOS, *rng.integers(3, 400, 4).tolist()], [BOS, 17]]
    tok, mask = pad_prompts(prompts, length_buckets=(T,), pad_id=PAD)
    assert tok.shape == (4, T) and mask.sum(1).tolist() == [T, 5, 2, 1]
    return jnp.asarray(tok), jnp.asarray(mask)


def responses(p: int, seed: int = 1):
    """tokens int32 [P, S, L], mask bool [P, S, L]: real up to and including an EOS, then pad; lengths
    1 .. L (some with no EOS: the full budget)."""
    rng = np.random.default_rng(seed)
    tok = rng.integers(3, 400, (p, S, L)).astype(np.int32)
    lengths = rng.integers(1, L + 1, (p, S))
    lengths[0, 0], lengths[1, 1] = 1, L
    mask = np.arange(L)[None, None] < lengths[..., None]
    ends = lengths < L
    tok[np.nonzero(ends) + (lengths[ends] - 1,)] = EOS
    tok[~mask] = PAD
    return jnp.asarray(tok), jnp.asarray(mask)


def unshared_logprobs(config, params, prompt_bt, pmask_bt, tok_bsl, mask_bsl):
    """The reference: every [prompt | response] through token_logprobs, response positions picked."""
    b, s, length = tok_bsl.shape
    rep = lambda x: jnp.repeat(x, s, axis=0)
    tokens = jnp.concatenate([rep(prompt_bt), tok_bsl.reshape(b * s, length)], 1)
    mask = jnp.concatenate([rep(pmask_bt).astype(bool), mask_bsl.reshape(b * s, length)], 1)
    lp = tfm.token_logprobs(config, params, tokens, None, mask, chunk=4)
    return lp[:, T - 1 :].reshape(b, s, length)


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma3"])
def test_shared_prefix_logprobs_and_gradients_equal_the_unshared_computation(name):
    config, params = load(name)
    prompt_bt, pmask_bt = prompt_batch()
    tok_bsl, mask_bsl = responses(prompt_bt.shape[0])
    shared = lambda params: tfm.shared_prefix_logprobs(
        config, params, prompt_bt, pmask_bt, tok_bsl, mask_bsl, chunk=4
    )
    full = lambda params: unshared_logprobs(config, params, prompt_bt, pmask_bt, tok_bsl, mask_bsl)
    # A weighted sum over the real response tokens, per sequence, averaged over the P * S sequences (the
    # trainer's loss scale); its gradient w.r.t. every parameter, and the log-probs as aux.
    w_bsl = jnp.asarray(np.random.default_rng(2).normal(size=(4, S, L)), jnp.float32) * mask_bsl
    loss = lambda f: lambda p: (jnp.sum(w_bsl * (lp := f(p))) / (4 * S), lp)
    (_, got), g_shared = jax.jit(jax.value_and_grad(loss(shared), has_aux=True))(params)
    (_, want), g_full = jax.jit(jax.value_and_grad(loss(full), has_aux=True))(params)
    assert got.shape == (4, S, L)
    # Every position, masked ones included (same positions/masks, so the same numbers there too).
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
    assert np.asarray(want).std() > 0.5  # non-trivial log-probs
    flat_s, flat_f = jax.tree_util.tree_flatten_with_path(g_shared)[0], jax.tree.leaves(g_full)
    assert len(flat_s) == len(flat_f) == len(jax.tree.leaves(params))
    for (path, gs), gf in zip(flat_s, flat_f, strict=True):
        np.testing.assert_allclose(np.asarray(gs), np.asarray(gf), atol=1e-5, rtol=0, err_msg=str(path))
    # Non-vacuous: the key projections (prompt and response keys) get gradient.
    assert float(optax.tree.norm(g_full["layers"]["k"])) > 1e-3


def test_lm_policy_switch_gives_the_same_logprobs_and_single_token_responses():
    """LMPolicy.logprobs (the trainer's call) with and without the shared prompt; L = 1 (only the token
    scored from the prompt's last hidden state)."""
    config, params = load("llama")
    prompt_bt, pmask_bt = prompt_batch(3)
    batch = {"prompt_bt": prompt_bt, "prompt_mask_bt": pmask_bt}
    for length in (L, 1):
        tok, mask = responses(4, seed=4)
        samples = {"tokens": tok[..., :length], "mask": mask[..., :length]}
        out = {}
        for shared in (True, False):
            policy = LMPolicy(config, length, (EOS,), PAD, shared_prompt=shared)
            out[shared] = jax.jit(policy.logprobs)(params, batch, samples)
        np.testing.assert_array_equal(np.asarray(out[True][1]), np.asarray(samples["mask"]))
        np.testing.assert_allclose(np.asarray(out[True][0]), np.asarray(out[False][0]), atol=1e-5, rtol=0)
        m = np.asarray(samples["mask"])
        assert np.all(np.asarray(out[True][0])[~m] == 0) and np.all(np.asarray(out[True][0])[m] < 0)


def _scorer(env, batch, samples):
    """A deterministic toy reward of the response tokens (the update is what is compared here)."""
    tok = samples["tokens"].astype(jnp.float32)
    return jnp.sum(jnp.sin(tok * env["freq"]) * samples["mask"], axis=-1)


def test_ctrl_train_step_equal_with_and_without_shared_prompt():
    """One fused CTRL train step (sample -> score -> calibrate -> update: π forward + backward through the
    vjp, π_ref forward, k1 KL in the reward) on the Llama fixture: the same params and metrics with either
    log-prob path. (The PPO-epoch path, ppo_epochs > 1, takes jax.grad of the same LMPolicy.logprobs, whose
    gradients are compared above.)"""
    config, params = load("llama")
    # π ≠ π_ref, so the KL term and its gradient are not zero.
    ref, params = params, jax.tree.map(lambda x: x * 1.05, params)
    prompt_bt, pmask_bt = prompt_batch(5)
    batch = {"prompt_bt": np.asarray(prompt_bt), "prompt_mask_bt": np.asarray(pmask_bt)}
    cfg = StepConfig(transform=parse_transform("exp:4"), loss=LossConfig(beta=0.1), num_samples=4, num_ref=8)
    env = {"freq": np.float32(0.37)}
    out = {}
    for shared in (True, False):
        policy = LMPolicy(config, 6, (EOS,), PAD, shared_prompt=shared)
        trainer = CtrlTrainer(policy, _scorer, cfg, optax.sgd(0.5), make_mesh(1, 1, jax.devices()[:1]))
        state = trainer.init_state(params, ref, env, seed=0)
        state, metrics = trainer.train_step(state, trainer.shard_batch(batch), trainer.step_rng(state))
        out[shared] = (jax.device_get(state.params), jax.device_get(metrics))
    (p_sh, m_sh), (p_full, m_full) = out[True], out[False]
    assert m_sh["finite"] == 1.0 and m_sh["grad_norm"] > 1e-3
    moved = max(
        float(np.abs(a - b).max())
        for a, b in zip(jax.tree.leaves(p_sh), jax.tree.leaves(params), strict=True)
    )
    assert moved > 1e-3
    for a, b in zip(jax.tree.leaves(p_sh), jax.tree.leaves(p_full), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    for k in ("loss", "kl/k1_seq", "kl/k3", "entropy/seq", "grad_norm", "reward/raw_mean"):
        np.testing.assert_allclose(m_sh[k], m_full[k], atol=1e-5, rtol=1e-5, err_msg=k)
