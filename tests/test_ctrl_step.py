"""The jitted CTRL step: sharding invariance (1 vs 8 devices, fsdp), phased == fused, non-finite guard, the
update's gradients == jax.grad of the surrogate, and a 2-process jax.distributed run equal to one process.

Run as a script (``python tests/test_ctrl_step.py PROCESS_ID PORT OUT``) it is the multi-process worker.
"""

import sys

import jax
import numpy as np
import pytest
from two_processes import init_worker, run_workers

from infalign_jax.ctrl import bandit
from infalign_jax.ctrl.objective import LossConfig
from infalign_jax.ctrl.train_step import CtrlTrainer, StepConfig
from infalign_jax.ctrl.transforms import parse_transform
from infalign_jax.harness.optimizer import make_optimizer
from infalign_jax.mesh import make_mesh

C, V, S, K = 8, 64, 8, 16
# Unsampled atoms have an exact gradient of 0 (RLOO advantages sum to 0) that float32 computes as ~1e-9
# roundoff;
# Adam's first step maps any nonzero gradient to ±lr·g/(|g| + eps), so with eps = 1e-8 those coordinates
# would move
# by ~±lr in a direction set by roundoff. eps = 1e-4 keeps roundoff-level gradients at roundoff-level updates
# (< 1e-6) while real gradients (~1e-2 here) still get Adam's normalized steps.
ADAM_EPS = 1e-4


def _run(
    mesh, steps=3, mode="fused", transform="exp:4", nan_response=-1, kl_mode="k1", clip_eps=None, ppo_epochs=1
):
    prob = bandit.make_bandit(C, V, 1.0, 3)
    rewards = prob.rewards.copy()
    if nan_response >= 0:
        rewards[:, nan_response] = np.nan
    cfg = StepConfig(
        transform=parse_transform(transform),
        loss=LossConfig(beta=0.2, kl_mode=kl_mode, clip_eps=clip_eps),
        num_samples=S,
        num_ref=K,
        ppo_epochs=ppo_epochs,
    )
    tr = CtrlTrainer(
        bandit.TabularPolicy(),
        bandit.bandit_scorer,
        cfg,
        make_optimizer(0.1, 10, warmup_steps=1, max_grad_norm=1.0, eps=ADAM_EPS),
        mesh,
    )
    state = tr.init_state({"logits": prob.ref_logits}, {"logits": prob.ref_logits}, {"rewards": rewards}, 7)
    step = tr.train_step if mode == "fused" else tr.phased_step
    losses, finite = [], []
    for i in range(steps):
        state, m = step(state, tr.shard_batch(prob.batch(i, C)), tr.step_rng(state))
        losses.append(float(m["loss"]))
        finite.append(float(m["finite"]))
    from infalign_jax.train import host_tree

    return (
        np.array(losses),
        host_tree(state.params)["logits"],
        finite,
        host_tree(state.opt_state),
        int(state.step),
    )


def test_lr_schedule_counts_train_steps_not_epochs():
    """With E updates per train step (ppo_epochs) every update of step k uses the schedule's value at k, so a
    run's schedule spans its num_steps train steps. Adam on a constant gradient moves by exactly lr per update
    (m̂ = g, v̂ = g², up to eps; b1 = b2 = 0.5 keep the bias corrections exact in float32), so the moves ARE
    the learning rates: cosine over 4 steps from 0.1 to 0."""
    import optax

    tx = make_optimizer(
        0.1, 4, schedule="cosine", b1=0.5, b2=0.5, eps=1e-12, max_grad_norm=None, updates_per_step=2
    )
    params = np.zeros(3, np.float32)
    state = tx.init(params)
    moves = []
    for _ in range(8):
        updates, state = tx.update(np.ones(3, np.float32), state, params)
        params = optax.apply_updates(params, updates)
        moves.append(-float(updates[0]))
    base = [0.1 * 0.5 * (1 + np.cos(np.pi * k / 4)) for k in range(4)]
    np.testing.assert_allclose(moves, np.repeat(base, 2), rtol=1e-6)


def test_sharding_invariance_and_phased_equals_fused():
    """1 device (fused and phased) vs 8 devices vs data=4 x fsdp=2, with k3 KL and 2 clipped PPO epochs."""
    kw = dict(kl_mode="k3", clip_eps=0.2, ppo_epochs=2)
    l1, p1, _, _, _ = _run(make_mesh(1, 1, jax.devices()[:1]), **kw)
    assert not np.allclose(p1, bandit.make_bandit(C, V, 1.0, 3).ref_logits)  # the step did move the params
    runs = [
        _run(make_mesh(1, 1, jax.devices()[:1]), mode="phased", **kw),
        _run(make_mesh(8, 1), **kw),
        _run(make_mesh(4, 2), **kw),
    ]
    for loss, params, *_ in runs:
        np.testing.assert_allclose(loss, l1, atol=1e-5)
        np.testing.assert_allclose(params, p1, atol=1e-5)


def test_policy_and_reference_samples_use_independent_keys():
    """Online mode at π = π_ref: with one key for both, the S policy samples of prompt 0 were the first S of
    its K reference samples (threefry's counters of shapes (P, S) and (P, K) agree on row 0), so each tied
    with itself in the calibration (mutation review, 2026-11-27)."""
    import jax.numpy as jnp

    from infalign_jax.ctrl.train_step import TrainState, phase_sample

    prob = bandit.make_bandit(C, V, 1.0, 3)
    cfg = StepConfig(parse_transform("identity"), LossConfig(beta=0.2), num_samples=S, num_ref=K)
    logits = {"logits": jnp.asarray(prob.ref_logits)}
    state = TrainState(jnp.asarray(0), logits, None, None, jnp.asarray(0), logits, None)
    out = phase_sample(bandit.TabularPolicy(), cfg, state, prob.batch(0, C), jax.random.key(0))
    policy, reference = np.asarray(out["samples"]["response"]), np.asarray(out["ref_samples"]["response"])
    assert policy.shape == (C, S) and reference.shape == (C, K)
    assert not np.any(np.all(policy == reference[:, :S], axis=1))  # 8 independent draws of 64 atoms


def test_nonfinite_reward_leaves_state_unchanged():
    _, params, finite, opt_state, step = _run(make_mesh(1, 1, jax.devices()[:1]), steps=1, nan_response=0)
    assert finite == [0.0] and step == 0
    np.testing.assert_array_equal(params, bandit.make_bandit(C, V, 1.0, 3).ref_logits)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(opt_state))


def test_two_processes_match_one(tmp_path):
    out = tmp_path / "mp.npz"
    run_workers(__file__, out, timeout=120)
    got = np.load(out)
    loss, params, _, _, _ = _run(make_mesh(2, 2, jax.devices()[:4]))
    np.testing.assert_allclose(got["loss"], loss, atol=1e-5)
    np.testing.assert_allclose(got["params"], params, atol=1e-5)


@pytest.mark.parametrize("epochs", [1, 3])
def test_update_gradients_equal_direct_autodiff(epochs):
    """With one epoch phase_update takes the gradient from the vjp of the forward pass that gave the old
    log-probs; with several, every epoch runs forward + backward in a scan. With plain SGD (lr 1) every
    epoch's step must equal -grad of the surrogate loss by jax.grad (PPO clipping and the k3 term active)."""
    import jax.numpy as jnp
    import optax

    from infalign_jax.ctrl.objective import pg_loss, rloo_advantages, sequence_rewards
    from infalign_jax.ctrl.train_step import TrainState, phase_update

    prob = bandit.make_bandit(C, V, 1.0, 3)
    policy = bandit.TabularPolicy()
    loss_cfg = LossConfig(beta=0.2, kl_mode="k3", clip_eps=0.2)
    cfg = StepConfig(
        transform=parse_transform("exp:4"), loss=loss_cfg, num_samples=S, num_ref=K, ppo_epochs=epochs
    )
    rng = np.random.default_rng(0)
    ref = {"logits": jnp.asarray(prob.ref_logits)}
    params = {"logits": ref["logits"] + jnp.asarray(rng.normal(0, 0.3, ref["logits"].shape), jnp.float32)}
    batch = {"context": jnp.arange(C, dtype=jnp.int32)}
    samples = {"response": jnp.asarray(rng.integers(0, V, (C, S)), jnp.int32)}
    phi_ps = jnp.asarray(rng.uniform(0, 3, (C, S)), jnp.float32)
    scores = {"rewards_ps": phi_ps, "ref_rewards_pk": jnp.zeros((C, K), jnp.float32)}
    calib = {"phi_ps": phi_ps, "u_ps": phi_ps / 3}
    tx = optax.sgd(1.0)
    state = TrainState(jnp.int32(0), params, tx.init(params), jnp.zeros(2, jnp.uint32), jnp.int32(0), ref, {})
    new_state, metrics = jax.jit(
        lambda s: phase_update(policy, tx, cfg, s, batch, {"samples": samples}, scores, calib)
    )(state)

    old, mask = policy.logprobs(params, batch, samples)
    ref_logp, _ = policy.logprobs(ref, batch, samples)
    adv = rloo_advantages(sequence_rewards(phi_ps, old, ref_logp, mask, loss_cfg)[0])
    loss = lambda p: pg_loss(policy.logprobs(p, batch, samples)[0], old, ref_logp, mask, adv, loss_cfg)[0]
    expected = params
    for epoch in range(epochs):
        grads = jax.grad(loss)(expected)
        if epoch == 0:
            np.testing.assert_allclose(float(metrics["loss"]), float(loss(params)), rtol=1e-5)
            np.testing.assert_allclose(
                float(metrics["grad_norm"]), float(optax.global_norm(grads)), rtol=1e-5
            )
        expected = jax.tree.map(lambda p, g: p - g, expected, grads)
    assert float(metrics["finite"]) == 1.0
    assert float(jnp.max(jnp.abs(expected["logits"] - params["logits"]))) > 1e-2  # the epochs moved params
    np.testing.assert_allclose(
        np.asarray(new_state.params["logits"]), np.asarray(expected["logits"]), atol=1e-6
    )


def test_adam_moments_are_sharded_like_their_parameters():
    """GSPMD left the zeros_like Adam moments replicated (two full model copies per device under FSDP);
    init_state gives each moment its parameter's sharding, and a step keeps it."""
    problem = bandit.make_bandit(8, 64, 1.0, 3)
    cfg = StepConfig(transform=parse_transform("exp:4"), loss=LossConfig(beta=0.2), num_samples=8, num_ref=16)
    trainer = CtrlTrainer(
        bandit.TabularPolicy(), bandit.bandit_scorer, cfg, make_optimizer(0.1, 10), make_mesh(2, 4)
    )
    logits = {"logits": problem.ref_logits}
    state = trainer.init_state(logits, logits, {"rewards": problem.rewards}, 0)
    for _ in range(2):
        want = state.params["logits"].sharding.spec
        assert want == jax.sharding.PartitionSpec(None, "fsdp")
        adam = [
            s
            for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
            if hasattr(s, "mu")
        ]
        assert len(adam) == 1
        for moment in (adam[0].mu["logits"], adam[0].nu["logits"]):
            assert moment.sharding.spec == want and moment.addressable_shards[0].data.shape == (8, 16)
        state, _ = trainer.train_step(
            state, trainer.shard_batch(problem.batch(0, 8)), trainer.step_rng(state)
        )


if __name__ == "__main__":  # the worker of test_two_processes_match_one
    (out,) = init_worker(sys.argv)
    from infalign_jax.preemption import any_process  # the trainers' SIGTERM agreement: any process's flag

    assert any_process(jax.process_index() == 0) and any_process(jax.process_index() == 1)
    assert not any_process(False)
    loss, params, _, _, _ = _run(make_mesh(2, 2))
    if jax.process_index() == 0:
        np.savez(out, loss=loss, params=params)
    jax.distributed.shutdown()
