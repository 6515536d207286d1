"""Claiming a run's workdir: the settings record, the one resume rule, and the checkpoint to resume from.

Every trainer (CTRL ``train``, SFT, the main job) records its settings in the workdir (``settings.json``,
:data:`run_settings.RECORD`) before it writes anything else, so that no deletion inside the workdir lets a
rerun mix settings: a rerun is checked against the record by the one resume rule
(:func:`run_settings.check_resumable`, parameterised by a :class:`ResumeRule`) and refused with one
:class:`UsageError` line, nothing written, whatever is left of its outputs.

- :func:`claim` — a workdir without checkpoints of its own (the main job, whose runs sit in subdirectories).
- :func:`open_run` — a checkpointed run: also refuses a finished run whose checkpoints are gone and a
  checkpoint beyond the run's length, and restores the newest intact checkpoint (a damaged newer one is set
  aside with one warning line on stderr; see :mod:`infalign_jax.harness.checkpoint`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from infalign_jax import run_settings
from infalign_jax.errors import UsageError
from infalign_jax.harness.checkpoint import CHECKPOINTS, Checkpointer, Validate, barrier
from infalign_jax.io_utils import check_directory_path

# How to read the settings of a workdir written by an older version: (workdir, the record or None, the new
# settings) -> the settings to compare with (None: no run recorded).
Older = Callable[[Path, "dict | None", dict], "dict | None"]


@dataclass(frozen=True)
class ResumeRule:
    """What a resumed run may change (the arguments of :func:`run_settings.check_resumable`): the settings
    (dotted keys, or sections) in ``resumable``; the run length ``length_key`` only when ``extendable`` (a
    learning rate that does not decay over the run), ``length_note`` saying why not; ``hint`` what to do
    instead of resuming."""

    resumable: tuple[str, ...] = ()
    extendable: bool = False
    length_key: str = "num_steps"
    length_note: str = ""
    hint: str = "use another workdir"

    def check(self, old: dict, new: dict, where: str) -> None:
        """UsageError unless the run recorded as ``old`` may go on with ``new`` (``where`` names it)."""
        run_settings.check_resumable(
            old,
            new,
            where=where,
            resumable=self.resumable,
            extendable=self.extendable,
            length_key=self.length_key,
            length_note=self.length_note,
            hint=self.hint,
        )


def holds_something(path: Path) -> bool:
    """A file, or a directory that is not empty (an empty checkpoints/ holds no run)."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def check_settings(
    workdir: Path,
    settings: dict,
    *,
    rule: ResumeRule,
    where: str | None = None,
    outputs: Iterable[str] = (),
    older: Older | None = None,
    ignore_absent: Iterable[str] = (),
    record: str = run_settings.RECORD,
) -> dict | None:
    """The settings recorded for the run in ``workdir`` (None: there is none) once checked against
    ``settings`` by ``rule``; reads only.

    The record is ``workdir/record``, or what ``older`` makes of it (a workdir of an older version).
    Refused (UsageError): a run with settings ``rule`` does not let change (``where`` names it, default the
    workdir); any of ``outputs`` (names in the workdir: a file or a non-empty directory) without a record —
    resuming or overwriting it could mix two runs. Keys of ``ignore_absent`` that the record lacks
    altogether (recorded before they were settings) are not compared."""
    saved = run_settings.recorded(workdir, record)
    if older is not None:
        saved = older(workdir, saved, settings)
    if saved is None and (found := [n for n in outputs if holds_something(workdir / n)]):
        raise UsageError(
            f"{workdir} holds outputs of an earlier run ({', '.join(found)}) but no record of its settings "
            f"({record}); resuming or overwriting it could mix two runs — use another workdir"
        )
    if saved is not None:
        absent = set(ignore_absent) - saved.keys()
        compared = {k: v for k, v in settings.items() if k not in absent}
        rule.check(saved, compared, where or str(workdir))
    return saved


def claim(
    workdir: Path,
    settings: dict,
    *,
    rule: ResumeRule = ResumeRule(),
    what: str = "workdir",
    where: str | None = None,
    outputs: Iterable[str] = (),
    older: Older | None = None,
    ignore_absent: Iterable[str] = (),
    record: str = run_settings.RECORD,
) -> dict | None:
    """Claims ``workdir`` (named ``what`` in errors) for a run of ``settings`` that keeps no checkpoints of
    its own; returns the settings recorded before (None: a new run).

    Checked first (UsageError, nothing written): a file in the way of the directory, then the settings
    (:func:`check_settings`). Then the workdir is created and, if it holds no record yet, ``settings`` are
    recorded (before anything else is written)."""
    check_directory_path(workdir, what)
    previous = check_settings(
        workdir,
        settings,
        rule=rule,
        where=where,
        outputs=outputs,
        older=older,
        ignore_absent=ignore_absent,
        record=record,
    )
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {what} {workdir}: {e.strerror or e}") from None
    if previous is None and jax.process_index() == 0:
        run_settings.record(workdir, settings, record)
    return previous


def settings_in_checkpoint(key: str = "config", dirname: str = CHECKPOINTS, item: str = "state") -> Older:
    """An :data:`Older` for trainers whose older versions recorded their settings only in the checkpoints:
    without a record, the settings are ``meta[key]`` of the newest checkpoint that has them (a damaged one is
    skipped; None: no checkpoint has them). Reads only."""

    def older(workdir: Path, saved: dict | None, settings: dict) -> dict | None:
        if saved is not None or not _has_steps(workdir / dirname):
            return saved
        ckpt = Checkpointer(workdir, dirname=dirname, item=item, create=False)
        try:
            for step in reversed(ckpt.all_steps()):
                try:
                    if found := ckpt.meta(step).get(key):
                        return found
                except Exception:  # noqa: BLE001, S112 — a damaged checkpoint: try the one before
                    continue
            return None
        finally:
            ckpt.close()

    return older


def _has_steps(directory: Path) -> bool:
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


@dataclass
class OpenedRun:
    """A claimed checkpointed run: its ``checkpointer`` (close it at the end), and what it resumes from —
    the restored ``items`` and ``meta`` of checkpoint ``step`` (``None``, ``{}``, 0 for a new run)."""

    checkpointer: Checkpointer
    items: Any
    meta: dict
    step: int

    @property
    def resumed(self) -> bool:
        return self.items is not None


def open_run(
    workdir: Path,
    settings: dict,
    like: Any,
    *,
    rule: ResumeRule,
    save_every: int = 0,
    max_to_keep: int = 2,
    where: str | None = None,
    outputs: Iterable[str] = (),
    finished: Iterable[str] = (),
    older: Older | None = None,
    validate: Validate | None = None,
    record: str = run_settings.RECORD,
    dirname: str = CHECKPOINTS,
    item: str = "state",
) -> OpenedRun:
    """Claims the existing directory ``workdir`` for the checkpointed run of ``settings`` (JSON-ready, nested
    or flat; its run length is ``settings[rule.length_key]``) and restores the newest intact checkpoint onto
    ``like`` (the items of a freshly initialized run: shapes, dtypes, shardings).

    The settings are recorded in ``workdir/record`` before anything else is written, and again (if they
    changed, e.g. a run extended under a constant lr, or a workdir of an older version) once a checkpoint is
    restored. Refused (UsageError, nothing written): whatever :func:`check_settings` refuses; a finished run
    (any of ``finished`` present) whose checkpoints are gone — starting over would overwrite its outputs; a
    workdir whose checkpoints are all damaged; a checkpoint beyond the run length. A run interrupted before
    its first checkpoint starts over (the same settings give the same steps). A damaged newest checkpoint is
    skipped for the newest intact one (``validate``: see :meth:`Checkpointer.restore_intact`), set aside, and
    named in one warning line on stderr. Every process calls it (the record is written by process 0)."""
    has_steps = _has_steps(workdir / dirname)
    check_settings(workdir, settings, rule=rule, where=where, outputs=outputs, older=older, record=record)
    if not has_steps and (done := [n for n in finished if (workdir / n).exists()]):
        raise UsageError(
            f"{workdir} holds a finished run ({', '.join(done)}) but no checkpoint: starting over would "
            "overwrite its outputs — use another workdir"
        )
    barrier("infalign_jax.harness.workdir: workdir checked")  # before process 0 writes into it
    if not has_steps and jax.process_index() == 0:  # a new run: its record first, then checkpoints/
        run_settings.record(workdir, settings, record)
    ckpt = Checkpointer(workdir, save_every, max_to_keep, dirname=dirname, item=item)
    try:
        found = ckpt.restore_intact(like, validate)
    except UsageError:
        ckpt.close()
        raise
    length = run_settings.flatten(settings)[rule.length_key]
    if found.step is not None and found.step > length:
        ckpt.close()  # resuming would report the longer run as this one
        raise UsageError(
            f"{workdir} holds a run trained for {found.step} steps, more than {rule.length_key} {length}; "
            f"use another workdir (or {rule.length_key} >= {found.step})"
        )
    if jax.process_index() == 0:
        run_settings.record(workdir, settings, record)
    if found.damaged:
        ckpt.set_aside(found.damaged)
        bad = "; ".join(f"checkpoint {d.step} is damaged ({d.reason})" for d in found.damaged)
        print(
            f"warning: {bad}; resuming from step {found.step} (damaged checkpoints moved to "
            f"{workdir / ckpt.damaged_directory.name})",
            file=sys.stderr,
            flush=True,
        )
    return OpenedRun(ckpt, found.items, found.meta, found.step or 0)
