"""Starting a CLI as a subprocess and signalling it once it has made progress (SIGTERM / SIGKILL tests)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Polls ``predicate()`` until true; fails (with the process's stderr) if ``proc`` exits first or after
    ``timeout`` seconds."""
    t0 = time.time()
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.01)


def rows(path: Path) -> int:
    """Lines in ``path`` so far (0 if it does not exist yet), e.g. the rows of a metrics.jsonl."""
    return len(path.read_text().splitlines()) if path.exists() else 0


def signal_when(cmd, ready, sig=signal.SIGTERM, timeout: float = 300, **popen) -> tuple[int, str]:
    """Runs ``cmd``, sends ``sig`` once ``ready()`` is true, waits for the exit; returns (returncode, stderr).
    The process is killed if anything fails on the way."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    try:
        wait_for(ready, proc, timeout)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err
