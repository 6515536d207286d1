"""Run logging: TensorBoard event files (tensorboardX, no TensorFlow), a JSONL file and a tqdm bar."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm


def _to_float(v: Any) -> float | None:
    try:
        f = float(np.asarray(v))
    except (TypeError, ValueError):
        return None
    return f


class MetricsWriter:
    """Writes scalar metrics per step to ``<workdir>/metrics.jsonl`` and TensorBoard events under
    ``<workdir>/tb``.

    The JSONL file is appended to (resumed runs continue it); only the main process
    (``jax.process_index() == 0``) should construct a writer with ``enabled=True``.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        total_steps: int | None = None,
        initial_step: int = 0,
        enabled: bool = True,
        desc: str = "train",
        progress: bool = True,
    ):
        self.enabled = enabled
        self.workdir = Path(workdir)
        self._tb = None
        self._jsonl = None
        self._bar = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        self.workdir.mkdir(parents=True, exist_ok=True)
        self._tb = SummaryWriter(str(self.workdir / "tb"))
        self._jsonl = open(self.workdir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        if progress:
            self._bar = tqdm(total=total_steps, initial=initial_step, desc=desc, dynamic_ncols=True)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
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

    def close(self) -> None:
        if not self.enabled:
            return
        self._tb.flush()
        self._tb.close()
        self._jsonl.close()
        if self._bar is not None:
            self._bar.close()
