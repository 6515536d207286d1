"""Orbax checkpoints of a CTRL run: params, optimizer state, step, RNG key and data position.

Layout: ``<workdir>/checkpoints/<step>/{state,meta}`` (Orbax CheckpointManager, Composite of a StandardSave
pytree and a JSON dict). The frozen parts of the train state (reference params, reward environment) are not
saved: they are rebuilt from the config. Restoring places every array with the sharding of a freshly
initialized state, so a run can resume on a different mesh.

Only finite states are ever passed to :meth:`RunCheckpointer.save` (the loop checks the step's finiteness flag
first), so a NaN never reaches disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from infalign_jax.ctrl.train_step import TrainState


class RunCheckpointer:
    def __init__(self, workdir: str | os.PathLike, save_every: int, max_to_keep: int = 2):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.save_every = int(save_every)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.save_every > 0 and step % self.save_every == 0

    def save(self, state: TrainState, meta: dict[str, Any] | None = None) -> None:
        step = int(state.step)
        if step in self.manager.all_steps():
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state.checkpoint_items()),
                meta=ocp.args.JsonSave(meta or {}),
            ),
        )

    def restore(self, state: TrainState, step: int | None = None) -> TrainState:
        """Returns ``state`` with the saved items (latest step by default) in place, same shardings."""
        step = self.latest_step() if step is None else step
        items = state.checkpoint_items()
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), items)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
        r = restored["state"]
        return TrainState(
            step=r["step"],
            params=r["params"],
            opt_state=r["opt_state"],
            rng=r["rng"],
            data_pos=r["data_pos"],
            ref_params=state.ref_params,
            env=state.env,
        )

    def meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON metadata saved with a step (latest by default); {} if that checkpoint has none."""
        step = self.latest_step() if step is None else step
        if "meta" not in self.manager.item_metadata(step):
            return {}
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"] or {})

    def restore_raw(self, step: int | None = None) -> dict[str, Any]:
        """The saved items of a step, restored onto one local device whatever topology saved them (for tests,
        inspection and export)."""
        step = self.latest_step() if step is None else step
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            self.manager.item_metadata(step)["state"],
        )
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
