"""SIGTERM (preemption) handling shared by the trainers: save the last completed step, then exit 143.

TPU pods and preemptible VMs send SIGTERM before they take a machine away. Inside :func:`sigterm_flag` the
signal only sets a flag; the training loop asks ``requested()`` once per step, saves a checkpoint when it is
true and raises :class:`Preempted`, which the CLIs turn into exit code :data:`EXIT_PREEMPTED` (128 + SIGTERM,
what a shell reports for a process killed by it). A rerun resumes from that checkpoint.

On several processes the flag is agreed every step (:func:`any_process`): the signal may reach the processes
one step apart, and a process that entered the checkpoint save (a collective) while another ran the next step
(another collective) would hang both, unsaved.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

import jax
import numpy as np

EXIT_PREEMPTED = 143


class Preempted(RuntimeError):
    """SIGTERM arrived; a checkpoint of the last completed step was saved before raising."""


def any_process(flag: bool) -> bool:
    """``flag`` of ANY process (a host all-gather; just ``flag`` on one process)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


@contextlib.contextmanager
def sigterm_flag() -> Iterator[Callable[[], bool]]:
    """Within the block SIGTERM sets a flag instead of ending the process; yields ``requested()``: whether any
    process of the run has seen SIGTERM (call it at the same point of every step on every process). The
    previous handler is restored on exit."""
    seen = {"sigterm": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: seen.__setitem__("sigterm", True))
    try:
        yield lambda: any_process(seen["sigterm"])
    finally:
        signal.signal(signal.SIGTERM, previous)
