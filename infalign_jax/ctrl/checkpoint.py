"""Orbax checkpoints of a CTRL run: params, optimizer state, step, RNG key and data position.

Layout: ``<workdir>/checkpoints/<step>/{state,meta}`` (Orbax CheckpointManager, Composite of a StandardSave
pytree and a JSON dict). The frozen parts of the train state (reference params, reward environment) are not
saved: they are rebuilt from the config. Restoring places every array with the sharding of a freshly
initialized state, so a run can resume on a different mesh.

Only finite states are ever passed to :meth:`RunCheckpointer.save` (the loop checks the step's finiteness flag
first), so a NaN never reaches disk.

Integrity. Orbax writes a step into a temporary directory and renames it into place when complete, so a run
killed while saving leaves no half checkpoint under a step's name (the temporary directory is removed by the
next run). It does not check that the files it reads back are the ones it wrote: a truncated data file or one
flipped byte may restore silently as other numbers. So once a save has finished, the SHA-256 of every file of
the step is recorded in ``<step>/digests.json`` (:data:`DIGESTS`), and :meth:`RunCheckpointer.restore_intact`
checks them before restoring. A checkpoint that fails the check or does not restore (any Orbax / JSON error)
is damaged: the newest intact one is restored instead, and the damaged ones are moved out of the way to
``<workdir>/checkpoints.damaged/`` (kept for inspection; the run then saves those steps afresh). A step
without ``digests.json`` (a run killed between the end of a save and its record, or a checkpoint of an older
version) is trusted if it restores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from infalign_jax.ctrl.train_step import TrainState
from infalign_jax.errors import UsageError
from infalign_jax.io_utils import atomic_write_json

DIGESTS = "digests.json"
DAMAGED_DIR = "checkpoints.damaged"


def file_digests(step_dir: Path) -> dict[str, str]:
    """``{relative path: sha256 hex}`` of every file under ``step_dir`` except :data:`DIGESTS`."""
    out = {}
    for p in sorted(step_dir.rglob("*")):
        if p.is_file() and p.name != DIGESTS:
            with open(p, "rb") as f:  # in chunks: an LM checkpoint's data files run to gigabytes
                out[p.relative_to(step_dir).as_posix()] = hashlib.file_digest(f, "sha256").hexdigest()
    return out


def digest_problem(step_dir: Path) -> str | None:
    """Why the files of ``step_dir`` are not those recorded in its :data:`DIGESTS` (None: they are, or
    there is no record)."""
    record = step_dir / DIGESTS
    if not record.is_file():
        return None
    try:
        recorded = json.loads(record.read_text())
        if not isinstance(recorded, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        return f"{DIGESTS} unreadable ({e})"
    found = file_digests(step_dir)
    for name, digest in recorded.items():
        if name not in found:
            return f"{name} is missing"
        if found[name] != digest:
            return f"{name} differs from the file saved (SHA-256 mismatch)"
    return None


class _Mismatch(Exception):
    """A checkpoint whose files are not those saved (see :func:`digest_problem`)."""


def _one_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one short line (Orbax / tensorstore messages span lines and run long)."""
    text = " ".join(str(e).split()) or type(e).__name__
    if not isinstance(e, _Mismatch) and not text.startswith(type(e).__name__):
        text = f"{type(e).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _barrier(name: str) -> None:
    """A barrier of all processes of a jax.distributed run (a no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@dataclass(frozen=True)
class Damaged:
    """A checkpoint step that cannot be resumed from, and why."""

    step: int
    reason: str


class RunCheckpointer:
    def __init__(self, workdir: str | os.PathLike, save_every: int, max_to_keep: int = 2):
        self.workdir = Path(workdir).absolute()
        self.directory = self.workdir / "checkpoints"
        self.save_every = int(save_every)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._unsealed: int | None = None  # a step saved (asynchronously) whose digests are not recorded yet

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        return self.save_every > 0 and step % self.save_every == 0

    def save(self, state: TrainState, meta: dict[str, Any] | None = None) -> None:
        step = int(state.step)
        self._seal()  # the previous save is complete before the next starts (Orbax waits for it anyway)
        if step in self.manager.all_steps():
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state.checkpoint_items()),
                meta=ocp.args.JsonSave(meta or {}),
            ),
        )
        self._unsealed = step

    def _seal(self) -> None:
        """Waits for the pending save, then records the digests of its files (process 0 writes them)."""
        self.manager.wait_until_finished()
        step, self._unsealed = self._unsealed, None
        if step is None or jax.process_index() != 0:
            return
        step_dir = self.directory / str(step)
        if step_dir.is_dir():
            atomic_write_json(step_dir / DIGESTS, file_digests(step_dir), indent=None)

    def _restore(self, state: TrainState, step: int) -> tuple[TrainState, dict[str, Any]]:
        items = state.checkpoint_items()
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), items)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
        r = restored["state"]
        if int(r["step"]) != step:
            raise _Mismatch(f"holds the state of step {int(r['step'])}")
        new = TrainState(
            step=r["step"],
            params=r["params"],
            opt_state=r["opt_state"],
            rng=r["rng"],
            data_pos=r["data_pos"],
            ref_params=state.ref_params,
            env=state.env,
        )
        return new, dict(restored["meta"] or {})

    def restore(self, state: TrainState, step: int | None = None) -> TrainState:
        """Returns ``state`` with the saved items (latest step by default) in place, same shardings."""
        return self._restore(state, self.latest_step() if step is None else step)[0]

    def restore_intact(self, state: TrainState) -> tuple[TrainState | None, dict[str, Any], list[Damaged]]:
        """``(state, meta, damaged)``: the newest checkpoint that passes its digest check and restores (with
        the shardings of ``state``), its JSON metadata, and the newer steps that failed, each with a reason.
        ``(None, {}, [])`` when there is no checkpoint. Raises :class:`UsageError` when every checkpoint is
        damaged. Reads only: the caller moves the damaged steps away (:meth:`set_aside`) once it resumes."""
        damaged = []
        for step in reversed(self.all_steps()):
            try:
                if problem := digest_problem(self.directory / str(step)):
                    raise _Mismatch(problem)
                restored, meta = self._restore(state, step)
            except Exception as e:  # noqa: BLE001 — Orbax/tensorstore/JSON raise many types on damaged files
                damaged.append(Damaged(step, _one_line(e)))
                continue
            return restored, meta, damaged
        if damaged:
            raise UsageError(
                f"{self.directory} holds no intact checkpoint ("
                + "; ".join(f"step {d.step}: {d.reason}" for d in damaged)
                + "); remove the workdir or use another one"
            )
        return None, {}, []

    def set_aside(self, damaged: list[Damaged]) -> None:
        """Moves damaged steps to ``<workdir>/checkpoints.damaged/`` (the run then saves those steps anew)."""
        if not damaged:
            return
        self.manager.wait_until_finished()
        _barrier("infalign_jax.ctrl.checkpoint: damaged found")  # every process has done reading them
        if jax.process_index() == 0:
            target = self.workdir / DAMAGED_DIR
            target.mkdir(exist_ok=True)
            for d in damaged:
                dest, n = target / str(d.step), 1
                while dest.exists():  # damaged twice: keep both
                    dest, n = target / f"{d.step}.{n}", n + 1
                shutil.move(self.directory / str(d.step), dest)
        _barrier("infalign_jax.ctrl.checkpoint: damaged moved")
        self.manager.reload()

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
        self._seal()

    def close(self) -> None:
        self._seal()
        self.manager.close()
