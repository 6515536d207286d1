"""The checkpoints of a CTRL run: its :class:`~infalign_jax.ctrl.train_step.TrainState` <-> checkpoint items.

A checkpoint holds ``TrainState.checkpoint_items()`` (params, optimizer state, step, RNG key, data position)
and the run's config as JSON (:mod:`infalign_jax.harness.checkpoint`: layout, digests, damaged checkpoints).
The frozen parts of the train state (reference params, reward environment) are not saved: they are rebuilt
from the config. Only finite states are ever saved (the loop checks the step's finiteness flag first), so a
NaN never reaches disk.
"""

from __future__ import annotations

from typing import Any

from infalign_jax.ctrl.train_step import TrainState


def with_items(state: TrainState, items: dict[str, Any]) -> TrainState:
    """``state`` with the saved items (see ``TrainState.checkpoint_items``) in place of its own."""
    return TrainState(
        step=items["step"],
        params=items["params"],
        opt_state=items["opt_state"],
        rng=items["rng"],
        data_pos=items["data_pos"],
        ref_params=state.ref_params,
        env=state.env,
    )


def step_mismatch(items: dict[str, Any], meta: dict, step: int) -> str | None:
    """Why restored ``items`` are not the state of checkpoint ``step`` (None: they are)."""
    if int(items["step"]) != step:
        return f"holds the state of step {int(items['step'])}"
    return None
