"""The pure parts of SFT: the masked next-token loss, the optimizer of a config and the jitted train / eval
steps.

Everything here is a function of arrays and pytrees (the ``nnx.split`` state); nothing reads files or flags.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from infalign_jax.harness.optimizer import lr_schedule, make_optimizer, matrices_only


def masked_lm_loss(logits_btv, tokens_bt, loss_mask_bt):
    """``(sum of -log p(target), number of targets)`` for next-token prediction.

    Position t predicts ``tokens[t + 1]``; it counts where ``loss_mask[t + 1] == 1``.
    """
    logp_btv = jax.nn.log_softmax(logits_btv[:, :-1].astype(jnp.float32), axis=-1)
    targets_bt = tokens_bt[:, 1:]
    nll_bt = -jnp.take_along_axis(logp_btv, targets_bt[..., None], axis=-1)[..., 0]
    w_bt = loss_mask_bt[:, 1:].astype(jnp.float32)
    return jnp.sum(nll_bt * w_bt), jnp.sum(w_bt)


def optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(tx, schedule)`` of an SFT config on the harness optimizer
    (:func:`infalign_jax.harness.optimizer.make_optimizer`): global-norm clipping, then AdamW with linear
    warmup + cosine decay to ``end_lr_fraction`` of the peak over ``num_steps`` (at least ``warmup_steps``
    + 1). Weight decay applies to matrices only (ndim >= 2), not to norm scales."""
    schedule_args = dict(
        lr=config.learning_rate,
        total_steps=max(config.num_steps, config.warmup_steps + 1),
        warmup_steps=config.warmup_steps,
        schedule="cosine",
        end_value=config.learning_rate * config.end_lr_fraction,  # the floor as optax computed it before
    )
    tx = make_optimizer(
        **schedule_args,
        weight_decay=config.weight_decay,
        b1=config.b1,
        b2=config.b2,
        max_grad_norm=config.grad_clip,
        weight_decay_mask=matrices_only,
    )
    return tx, lr_schedule(**schedule_args)


def make_steps(graphdef, tx, pad_id: int):
    """Jitted ``train_step(state, opt_state, tokens_bt, loss_mask_bt) -> (state, opt_state, metrics)`` and
    ``eval_step(state, tokens_bt, loss_mask_bt) -> (nll_sum, n_targets)`` (pure functions of the state)."""
    from infalign_jax.models import functional

    def loss_fn(state, tokens_bt, loss_mask_bt):
        logits_btv = functional.forward(graphdef, state, tokens_bt, mask_bt=tokens_bt != pad_id)
        nll, n = masked_lm_loss(logits_btv, tokens_bt, loss_mask_bt)
        return nll / jnp.maximum(n, 1.0), n

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(state, opt_state, tokens_bt, loss_mask_bt):
        (loss, n), grads = jax.value_and_grad(loss_fn, has_aux=True)(state, tokens_bt, loss_mask_bt)
        updates, opt_state = tx.update(grads, opt_state, state)
        state = optax.apply_updates(state, updates)
        return state, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "targets": n}

    @jax.jit
    def eval_step(state, tokens_bt, loss_mask_bt):
        logits_btv = functional.forward(graphdef, state, tokens_bt, mask_bt=tokens_bt != pad_id)
        return masked_lm_loss(logits_btv, tokens_bt, loss_mask_bt)

    return train_step, eval_step
