"""The one optimizer of every trainer (CTRL, SFT, the main job): global-norm clipping, then AdamW with linear
warmup and a cosine / linear / constant decay of the learning rate.

:func:`lr_schedule` is the learning rate as a function of the optimizer's update count (SFT logs it);
:func:`make_optimizer` chains clipping and AdamW on it. Weight decay applies to every parameter unless a
``weight_decay_mask`` says otherwise (:func:`matrices_only`: SFT's rule).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from infalign_jax.errors import UsageError


def matrices_only(params: Any) -> Any:
    """A weight-decay mask: True for matrices and higher-rank arrays (ndim >= 2), False for vectors and
    scalars (norm scales, biases), which decoupled weight decay would pull towards zero for no benefit."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def lr_schedule(
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    end_factor: float = 0.0,
    updates_per_step: int = 1,
    *,
    end_value: float | None = None,
) -> optax.Schedule:
    """The learning rate per optimizer update: linear warmup from 0 to ``lr`` over ``warmup_steps`` train
    steps, then (cosine | linear | constant) decay from ``lr`` to ``lr * end_factor`` over the remaining
    ``total_steps - warmup_steps`` (at least 1).

    ``total_steps`` and ``warmup_steps`` count TRAIN steps; a train step makes ``updates_per_step`` optimizer
    updates (CTRL's ``ppo_epochs``), which all use that step's learning rate — so the schedule spans the run
    whatever the number of epochs (counted in updates, it would end ``ppo_epochs`` times too early and leave
    the rest of the run at the end learning rate).

    ``end_value`` (instead of ``end_factor``) gives the end learning rate itself: the cosine's floor is then
    ``end_value / lr``, computed as ``optax.warmup_cosine_decay_schedule`` computes it, so SFT's schedule
    (written with that function before, its end ``lr * end_lr_fraction``) stays bit-identical for every
    config, not only those where ``(lr * f) / lr == f`` in floating point."""
    if lr <= 0:
        raise UsageError(f"learning rate must be > 0, got {lr}")
    if updates_per_step < 1:
        raise UsageError(f"updates_per_step must be >= 1, got {updates_per_step}")
    end_lr = lr * end_factor if end_value is None else end_value
    alpha = end_factor if end_value is None else end_value / lr
    decay_steps = max(total_steps - warmup_steps, 1)
    if schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=alpha)
    elif schedule == "linear":
        decay = optax.linear_schedule(lr, end_lr, decay_steps)
    elif schedule == "constant":
        decay = optax.constant_schedule(lr)
    else:
        raise UsageError(f"unknown lr schedule {schedule!r}; expected cosine, linear or constant")
    sched = (
        decay
        if warmup_steps <= 0
        else optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), decay], [warmup_steps])
    )
    if updates_per_step > 1:
        per_step = sched
        sched = lambda count: per_step(count // updates_per_step)
    return sched


def make_optimizer(
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    end_factor: float = 0.0,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    max_grad_norm: float | None = 1.0,
    updates_per_step: int = 1,
    *,
    weight_decay_mask: Callable[[Any], Any] | Any | None = None,
    end_value: float | None = None,
) -> optax.GradientTransformation:
    """Global-norm clipping (none when ``max_grad_norm`` is None), then AdamW on :func:`lr_schedule` (same
    arguments; the schedule itself: call :func:`lr_schedule`).

    ``weight_decay_mask`` (an optax mask: a pytree of bools or a function of the params giving one) limits
    weight decay to some parameters, e.g. :func:`matrices_only` (SFT). The default decays every parameter:
    that is what every CTRL run has done (the positional signature keeps its meaning for the existing callers
    and notebooks), and all CTRL configs set ``weight_decay`` 0, where the mask changes nothing — a trainer
    that decays weights says which ones."""
    sched = lr_schedule(
        lr, total_steps, warmup_steps, schedule, end_factor, updates_per_step, end_value=end_value
    )
    parts = [] if max_grad_norm is None else [optax.clip_by_global_norm(max_grad_norm)]
    parts.append(optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask))
    return optax.chain(*parts)
