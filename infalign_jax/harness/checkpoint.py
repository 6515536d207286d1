"""Orbax checkpoints of a run: any pytree of arrays plus a JSON dict per step, with integrity digests.

Layout: ``<workdir>/<dirname>/<step>/{<item>,meta}`` (an Orbax CheckpointManager, Composite of a StandardSave
pytree named ``item`` — ``"state"`` by default — and a JSON dict), ``dirname`` ``"checkpoints"`` by default.
Restoring places every array with the sharding of the abstract tree given (a freshly initialized state's), so
a run can resume on a different mesh. What a trainer keeps in the pytree (params, optimizer state, step, RNG
key, data position) and in the JSON dict (its config, a loader position) is its own choice.

Integrity. Orbax writes a step into a temporary directory and renames it into place when complete, so a run
killed while saving leaves no half checkpoint under a step's name (the temporary directory is removed by the
next run). It does not check that the files it reads back are the ones it wrote: a truncated data file or one
flipped byte may restore silently as other numbers. So once a save has finished, the SHA-256 of every file of
the step is recorded in ``<step>/digests.json`` (:data:`DIGESTS`), and :meth:`Checkpointer.restore_intact`
checks them before restoring. A checkpoint that fails the check or does not restore (any Orbax / JSON error)
is damaged: the newest intact one is restored instead, and the damaged ones are moved out of the way to
``<workdir>/<dirname>.damaged/`` (:data:`DAMAGED_DIR` for the default name; kept for inspection, the run then
saves those steps afresh). A step without ``digests.json`` (a run killed between the end of a save and its
record, or a checkpoint of an older version) is trusted if it restores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from infalign_jax.errors import UsageError
from infalign_jax.io_utils import atomic_write_json

DIGESTS = "digests.json"
CHECKPOINTS = "checkpoints"
DAMAGED_DIR = f"{CHECKPOINTS}.damaged"

# A check of restored items: (items, meta, step) -> why they are not step's checkpoint (None: they are).
Validate = Callable[[Any, dict, int], "str | None"]


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
    """A checkpoint whose files or items are not those saved (see :func:`digest_problem`, ``validate``)."""


def _one_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one short line (Orbax / tensorstore messages span lines and run long)."""
    text = " ".join(str(e).split()) or type(e).__name__
    if not isinstance(e, _Mismatch) and not text.startswith(type(e).__name__):
        text = f"{type(e).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def barrier(name: str) -> None:
    """A barrier of all processes of a jax.distributed run (a no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def abstract_tree(tree: Any) -> Any:
    """``tree`` as ``jax.ShapeDtypeStruct`` leaves with each array's sharding (None for host arrays): what
    :meth:`Checkpointer.restore` places the saved arrays onto."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )


@dataclass(frozen=True)
class Damaged:
    """A checkpoint step that cannot be resumed from, and why."""

    step: int
    reason: str


@dataclass(frozen=True)
class Restored:
    """What :meth:`Checkpointer.restore_intact` found: the newest intact checkpoint's ``items`` (None:
    there is no checkpoint), its JSON ``meta``, its ``step``, and the newer ``damaged`` steps."""

    items: Any
    meta: dict
    step: int | None
    damaged: list[Damaged]


class Checkpointer:
    """The checkpoints of one run in ``<workdir>/<dirname>/`` (see the module docstring).

    ``save_every`` (0: never on a schedule) is what :meth:`should_save` asks; ``max_to_keep`` the number of
    newest steps kept; ``item`` the name of the pytree item in each step (``"state"``; SFT's older checkpoints
    name it ``"train"``); ``create=False`` creates no directory (for reading)."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        save_every: int = 0,
        max_to_keep: int = 2,
        *,
        dirname: str = CHECKPOINTS,
        item: str = "state",
        create: bool = True,
    ):
        self.workdir = Path(workdir).absolute()
        self.directory = self.workdir / dirname
        self.damaged_directory = self.workdir / f"{dirname}.damaged"
        self.save_every = int(save_every)
        self.item = item
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=create, cleanup_tmp_directories=True
        )
        handlers = {item: ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._unsealed: int | None = None  # a step saved (asynchronously) whose digests are not recorded yet
        self._closed = False

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether ``step`` is on the save schedule (every ``save_every`` steps)."""
        return self.save_every > 0 and step % self.save_every == 0

    def save(self, step: int, items: Any, meta: dict[str, Any] | None = None) -> None:
        """Saves the pytree ``items`` and the JSON dict ``meta`` as ``step`` (asynchronously: its digests are
        recorded when the next save starts, or by :meth:`wait` / :meth:`close`). A step already saved is kept
        as it is."""
        step = int(step)
        self._seal()  # the previous save is complete before the next starts (Orbax waits for it anyway)
        if step in self.manager.all_steps():
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(
                **{self.item: ocp.args.StandardSave(items), "meta": ocp.args.JsonSave(meta or {})}
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

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """``(items, meta)`` of ``step`` (latest by default), each array placed like the matching leaf of
        ``like`` (arrays or ``jax.ShapeDtypeStruct``: their shapes, dtypes and shardings). No digest check:
        see :meth:`restore_intact`."""
        step = self.latest_step() if step is None else step
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{self.item: ocp.args.StandardRestore(abstract_tree(like)), "meta": ocp.args.JsonRestore()}
            ),
        )
        return restored[self.item], dict(restored["meta"] or {})

    def restore_intact(self, like: Any, validate: Validate | None = None) -> Restored:
        """The newest checkpoint that passes its digest check, restores onto ``like`` (see :meth:`restore`)
        and passes ``validate(items, meta, step)`` (a reason string: not this step's items); the newer steps
        that failed are listed in ``damaged``, each with a reason. ``Restored(None, {}, None, [])`` when
        there is no checkpoint. Raises :class:`UsageError` when every checkpoint is damaged (a UsageError
        raised by ``validate`` — the checkpoint does not fit the run — propagates). Reads only: the caller
        moves the damaged steps away (:meth:`set_aside`) once it resumes."""
        damaged = []
        for step in reversed(self.all_steps()):
            try:
                if problem := digest_problem(self.directory / str(step)):
                    raise _Mismatch(problem)
                items, meta = self.restore(like, step)
                if validate is not None and (problem := validate(items, meta, step)):
                    raise _Mismatch(problem)
            except UsageError:
                raise
            except Exception as e:  # noqa: BLE001 — Orbax/tensorstore/JSON raise many types on damaged files
                damaged.append(Damaged(step, _one_line(e)))
                continue
            return Restored(items, meta, step, damaged)
        if damaged:
            raise UsageError(
                f"{self.directory} holds no intact checkpoint ("
                + "; ".join(f"step {d.step}: {d.reason}" for d in damaged)
                + "); remove the workdir or use another one"
            )
        return Restored(None, {}, None, [])

    def set_aside(self, damaged: list[Damaged]) -> None:
        """Moves damaged steps to ``<workdir>/<dirname>.damaged/`` (the run then saves those steps anew)."""
        if not damaged:
            return
        self.manager.wait_until_finished()
        barrier("infalign_jax.harness.checkpoint: damaged found")  # every process has done reading them
        if jax.process_index() == 0:
            target = self.damaged_directory
            target.mkdir(exist_ok=True)
            for d in damaged:
                dest, n = target / str(d.step), 1
                while dest.exists():  # damaged twice: keep both
                    dest, n = target / f"{d.step}.{n}", n + 1
                shutil.move(self.directory / str(d.step), dest)
        barrier("infalign_jax.harness.checkpoint: damaged moved")
        self.manager.reload()

    def item_metadata(self, step: int | None = None) -> Any:
        """Orbax's metadata of a step's items (latest by default): shapes and dtypes, nothing restored."""
        return self.manager.item_metadata(self.latest_step() if step is None else step)

    def meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON metadata saved with a step (latest by default); {} if that checkpoint has none."""
        step = self.latest_step() if step is None else step
        if "meta" not in self.manager.item_metadata(step):
            return {}
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"] or {})

    def restore_raw(self, step: int | None = None) -> Any:
        """The saved items of a step (latest by default), restored onto one local device whatever topology
        saved them (for tests, inspection and export)."""
        step = self.latest_step() if step is None else step
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            self.manager.item_metadata(step)[self.item],
        )
        restored = self.manager.restore(
            step, args=ocp.args.Composite(**{self.item: ocp.args.StandardRestore(abstract)})
        )
        return restored[self.item]

    def wait(self) -> None:
        """Waits for the pending save and records its digests."""
        self._seal()

    def close(self) -> None:
        """Waits for the pending save, records its digests and closes the manager (again: nothing)."""
        if self._closed:
            return
        self._seal()
        self.manager.close()
        self._closed = True
