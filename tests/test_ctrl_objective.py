"""Policy-gradient loss pieces against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infalign_jax.cli import UsageError
from infalign_jax.ctrl.objective import LossConfig, pg_loss, rloo_advantages, sequence_rewards


def test_rloo():
    adv = rloo_advantages(jnp.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    np.testing.assert_allclose(np.asarray(adv), [[-1.5, 0.0, 1.5], [0.0, 0.0, 0.0]])


def test_sequence_rewards_k1_and_k3():
    phi = jnp.array([[1.0, 0.0]])
    old = jnp.array([[[-1.0, -2.0], [-0.5, -9.0]]])
    ref = jnp.array([[[-1.5, -1.0], [-1.0, 0.0]]])
    mask = jnp.array([[[1.0, 1.0], [1.0, 0.0]]])
    r, kl = sequence_rewards(phi, old, ref, mask, LossConfig(beta=0.5))
    np.testing.assert_allclose(np.asarray(kl), [[0.5 - 1.0, 0.5]])
    np.testing.assert_allclose(np.asarray(r), [[1.0 + 0.25, -0.25]])
    r3, _ = sequence_rewards(phi, old, ref, mask, LossConfig(beta=0.5, kl_mode="k3"))
    np.testing.assert_allclose(np.asarray(r3), np.asarray(phi))


def _grad(cfg, logp, old, ref, mask, adv):
    return jax.grad(lambda lp: pg_loss(lp, old, ref, mask, adv, cfg)[0])(logp)


def test_gradient_normalizations():
    old = jnp.array([[[-1.0, -2.0], [-0.5, -3.0]]])  # P=1, S=2, L=2
    mask = jnp.array([[[1.0, 1.0], [1.0, 0.0]]])
    adv = jnp.array([[2.0, -1.0]])
    seq = _grad(LossConfig(beta=1.0), old, old, old, mask, adv)
    # sequence norm: d/dlogp of −mean_s Σ_t ratio·A at ratio 1 = −A/S on real tokens.
    np.testing.assert_allclose(np.asarray(seq), [[[-1.0, -1.0], [0.5, 0.0]]])
    tok = _grad(LossConfig(beta=1.0, loss_norm="token"), old, old, old, mask, adv)
    np.testing.assert_allclose(np.asarray(tok), [[[-2 / 3, -2 / 3], [1 / 3, 0.0]]])


def test_ppo_clipping():
    old = jnp.zeros((1, 2, 1))
    logp = jnp.log(jnp.full((1, 2, 1), 1.5))  # ratio 1.5 on both samples
    mask = jnp.ones((1, 2, 1))
    adv = jnp.array([[1.0, -1.0]])
    cfg = LossConfig(beta=1.0, clip_eps=0.2)
    loss, aux = pg_loss(logp, old, old, mask, adv, cfg)
    # A>0: min(1.5, 1.2)·1 = 1.2 (clipped); A<0: min(−1.5, −1.2) = −1.5 (unclipped). loss = −mean(1.2, −1.5).
    np.testing.assert_allclose(float(loss), -(1.2 - 1.5) / 2, rtol=1e-6)
    np.testing.assert_allclose(float(aux["clip_frac"]), 0.5)
    g = _grad(cfg, logp, old, old, mask, adv)
    np.testing.assert_allclose(np.asarray(g), [[[0.0], [1.5 / 2]]], rtol=1e-6)


def test_k3_term():
    logp = jnp.array([[[np.log(0.25)], [np.log(0.5)]]])
    ref = jnp.array([[[np.log(0.5)], [np.log(0.5)]]])
    mask = jnp.ones((1, 2, 1))
    adv = jnp.zeros((1, 2))
    loss, aux = pg_loss(logp, logp, ref, mask, adv, LossConfig(beta=0.5, kl_mode="k3"))
    k3 = (2.0 - np.log(2.0) - 1.0 + 0.0) / 2
    np.testing.assert_allclose(float(aux["k3_kl"]), k3, rtol=1e-6)
    np.testing.assert_allclose(float(loss), 0.5 * k3, rtol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        dict(beta=0.0),
        dict(beta=-1.0),
        dict(beta=1.0, kl_mode="k2"),
        dict(beta=1.0, loss_norm="batch"),
        dict(beta=1.0, clip_eps=1.5),
    ],
)
def test_invalid_loss_config(kw):
    with pytest.raises(UsageError):
        LossConfig(**kw).validate()


def test_k3_follows_loss_norm_and_unclipped_tokens_are_not_counted_as_clipped():
    """k3 under loss_norm='sequence' sums each sequence's tokens and averages over sequences (the other k3
    test has one token per sequence, where it equals the token mean); and ratio 1 (PPO's first epoch) clips
    nothing. Hand-computed: token (0, 0, 0) has π_ref/π = 0.5/0.25 = 2, so k3 = 2 − ln 2 − 1; the other two
    unmasked tokens have ratio 1 (k3 = 0)."""
    logp = jnp.log(jnp.array([[[0.25, 0.5], [0.5, 0.9]]]))
    ref = jnp.log(jnp.array([[[0.5, 0.5], [0.5, 0.1]]]))
    mask = jnp.array([[[1, 1], [1, 0]]])
    adv = jnp.zeros((1, 2))
    k3_0 = 1.0 - np.log(2.0)
    for norm, k3_mean in (("sequence", k3_0 / 2), ("token", k3_0 / 3)):
        loss, aux = pg_loss(logp, logp, ref, mask, adv, LossConfig(beta=0.5, kl_mode="k3", loss_norm=norm))
        np.testing.assert_allclose(float(aux["k3_kl"]), k3_mean, rtol=1e-6)
        np.testing.assert_allclose(float(loss), 0.5 * k3_mean, rtol=1e-6)
    old = jnp.log(jnp.full((1, 2, 3), 0.5))
    _, aux = pg_loss(
        old, old, old, jnp.ones((1, 2, 3)), jnp.array([[1.0, -1.0]]), LossConfig(1.0, clip_eps=0.2)
    )
    assert float(aux["clip_frac"]) == 0.0
