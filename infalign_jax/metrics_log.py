"""Run logging: TensorBoard event files (tensorboardX, no TensorFlow), a JSONL file and a tqdm bar."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from infalign_jax.io_utils import atomic_write_text


def _to_float(v: Any) -> float | None:
    try:
        f = float(np.asarray(v))
    except (TypeError, ValueError):
        return None
    return f


def _row_step(line: str) -> float | None:
    """The ``step`` of a metrics.jsonl row; ``nan`` for a JSON line without a numeric step, ``None`` for a
    torn (unparsable) line."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    step = row.get("step") if isinstance(row, dict) else None
    return float(step) if isinstance(step, int | float) and not isinstance(step, bool) else math.nan


def drop_rows_after(path: str | os.PathLike, step: int) -> int:
    """Removes the rows of steps after ``step`` (and torn, unparsable lines) from the JSONL file ``path``.

    A run resumed from its checkpoint at ``step`` repeats the steps after it, so the rows an interrupted
    attempt logged for them must go. The file is rewritten atomically, and only if something is dropped (a
    missing file is fine); rows without a numeric step are kept. Returns the number of lines dropped.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if (s := _row_step(ln)) is not None and not s > step]
    if len(kept) < len(lines) or not path.read_bytes().endswith(b"\n"):
        atomic_write_text(path, "".join(ln + "\n" for ln in kept))
    return len(lines) - len(kept)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


class MetricsWriter:
    """Writes scalar metrics per step to ``<workdir>/metrics.jsonl`` and TensorBoard events under
    ``<workdir>/tb``.

    The JSONL file is appended to (resumed runs continue it); only the main process
    (``jax.process_index() == 0``) should construct a writer with ``enabled=True``. With ``truncate=True``
    the run resumes at ``initial_step``: rows of later steps already in the file (logged by an interrupted
    attempt after its last checkpoint) are dropped first (:func:`drop_rows_after`) and TensorBoard is told to
    purge its events from step ``initial_step + 1`` on, so every step is logged once. The default
    (``truncate=False``) keeps what is there and only appends.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        total_steps: int | None = None,
        initial_step: int = 0,
        enabled: bool = True,
        desc: str = "train",
        progress: bool = True,
        truncate: bool = False,
    ):
        self.enabled = enabled
        self.workdir = Path(workdir)
        self._tb = None
        self._jsonl = None
        self._bar = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if truncate:
            drop_rows_after(self.workdir / "metrics.jsonl", initial_step)
        self._open_tb(purge_step=initial_step + 1 if truncate else None)
        path = self.workdir / "metrics.jsonl"
        self._jsonl = open(path, "a+")  # noqa: SIM115 (closed in close())
        torn = self._jsonl.tell() > 0 and _last_byte(path) != b"\n"
        if torn:  # a killed writer's half line: end it, so the next row is a line of its own
            self._jsonl.write("\n")
        if progress:
            self._bar = tqdm(total=total_steps, initial=initial_step, desc=desc, dynamic_ncols=True)

    def _open_tb(self, purge_step: int | None = None) -> None:
        from tensorboardX import SummaryWriter

        # A unique suffix: tensorboardX names event files by second and host and opens them with 'wb', so a
        # second writer started in the same second (a quick resume, a flush) wiped the first one's events.
        suffix = f".{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self._tb = SummaryWriter(str(self.workdir / "tb"), purge_step=purge_step, filename_suffix=suffix)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        if self._tb is None:  # closed by flush(): continue in a new event file
            self._open_tb()
        scalars = {k: f for k, v in metrics.items() if (f := _to_float(v)) is not None}
        for k, v in scalars.items():
            if math.isfinite(v):
                self._tb.add_scalar(k, v, step)
        self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
        self._jsonl.flush()
        if self._bar is not None:
            self._bar.update(max(0, int(step) - self._bar.n))
            shown = {k: f"{v:.4g}" for k, v in list(scalars.items())[:4]}
            self._bar.set_postfix(shown, refresh=False)

    def flush(self) -> None:
        """Puts every row written so far on disk, TensorBoard events included; call it before saving a
        checkpoint. tensorboardX writes events from a queue in a thread, flushing every 120 s, and its own
        flush() leaves queued events unwritten, so a run killed after a checkpoint lost those steps' events
        for good. Closing the SummaryWriter drains the queue; the next write opens a new event file."""
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._jsonl.flush()
        os.fsync(self._jsonl.fileno())

    def close(self) -> None:
        """Closes the files and the progress bar (again: nothing)."""
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._jsonl.close()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
