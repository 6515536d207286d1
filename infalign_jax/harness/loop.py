"""The per-step tail of every training loop: SIGTERM, metrics flush, checkpoint saves.

::

    with training_loop(ckpt, writer, num_steps) as loop:
        while step < num_steps:
            state, metrics = train_step(...)        # step = the step just completed
            writer.write(step, metrics)
            loop.end_step(step, state_items, meta)  # saves when due, raises Preempted on SIGTERM

A step ends with a save when it is on the checkpointer's schedule, is the last one, or SIGTERM arrived (any
process: the flag is agreed every step, :mod:`infalign_jax.preemption`); the metrics logged so far are
flushed to disk before the save, so the logs of every step a checkpoint covers survive it. After SIGTERM the
save is waited for and :class:`~infalign_jax.preemption.Preempted` raised (the CLIs exit 143; the same
command resumes). A loop that must know before the save whether one is due (SFT logs a row then) asks
:meth:`StepLoop.save_due` first; :meth:`StepLoop.end_step` then uses that answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from infalign_jax.harness.checkpoint import Checkpointer
from infalign_jax.metrics_log import MetricsWriter
from infalign_jax.preemption import Preempted, sigterm_flag


class StepLoop:
    """The save / SIGTERM decisions of one run (made by :func:`training_loop`)."""

    def __init__(
        self,
        checkpointer: Checkpointer,
        writer: MetricsWriter,
        total_steps: int,
        sigterm_requested: Callable[[], bool],
    ):
        self.checkpointer = checkpointer
        self.writer = writer
        self.total_steps = int(total_steps)
        self._sigterm_requested = sigterm_requested
        self._asked: tuple[int, bool] | None = None  # (step, SIGTERM seen) of the last save_due

    def save_due(self, step: int) -> bool:
        """Whether ``step`` ends with a save: on the schedule, the last step, or SIGTERM. Asks every process
        about SIGTERM once per step (a collective on several processes: call it at the same point of every
        step on every process; asked again for the same step, it answers as before)."""
        if self._asked is None or self._asked[0] != step:
            self._asked = (step, self._sigterm_requested())
        sigterm = self._asked[1]
        return self.checkpointer.should_save(step) or step == self.total_steps or sigterm

    @property
    def sigterm(self) -> bool:
        """Whether SIGTERM was seen at the last :meth:`save_due`."""
        return self._asked is not None and self._asked[1]

    def end_step(self, step: int, items: Any, meta: dict | None = None) -> None:
        """Ends ``step``: when a save is due (:meth:`save_due`), flushes the metrics, then saves ``items`` and
        ``meta`` as ``step``; after SIGTERM waits for that save and raises Preempted."""
        if self.save_due(step):
            self.writer.flush()  # the logs of every step the checkpoint covers are on disk first
            self.checkpointer.save(step, items, meta)
        if self.sigterm:
            self.checkpointer.wait()
            raise Preempted(f"SIGTERM: saved checkpoint at step {step}; exiting")


@contextlib.contextmanager
def training_loop(checkpointer: Checkpointer, writer: MetricsWriter, total_steps: int) -> Iterator[StepLoop]:
    """Within the block SIGTERM only sets a flag (:func:`~infalign_jax.preemption.sigterm_flag`); yields the
    run's :class:`StepLoop`. On leaving the block, however it is left, the writer and then the checkpointer
    are closed (the pending save completes and its digests are recorded)."""
    try:
        with sigterm_flag() as sigterm_requested:
            yield StepLoop(checkpointer, writer, total_steps, sigterm_requested)
    finally:
        writer.close()
        checkpointer.close()
