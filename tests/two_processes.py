"""Runs a test file as 2 jax.distributed worker processes on 127.0.0.1 (2 CPU devices each).

The test calls :func:`run_workers` ``(script, *args)``; each worker is ``python script PROCESS_ID PORT *args``
and usually starts with :func:`init_worker` (or passes PORT to a CLI's --coordinator). Workers get the
environment without the suite's fake-device XLA flags.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

NUM_PROCESSES, LOCAL_DEVICES = 2, 2


def run_workers(script, *args, cwd=None, timeout: float = 600) -> None:
    """Starts the workers, waits for both (killing any left on failure) and asserts they exited 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), str(port), *map(str, args)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(NUM_PROCESSES)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)


def init_worker(argv) -> list[str]:
    """In a worker: jax.distributed on 127.0.0.1 with LOCAL_DEVICES CPU devices; returns the extra args."""
    import jax

    pid, port = int(argv[1]), int(argv[2])
    jax.config.update("jax_num_cpu_devices", LOCAL_DEVICES)
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=NUM_PROCESSES,
        process_id=pid,
        coordinator_bind_address=f"127.0.0.1:{port}",
    )
    assert jax.process_count() == NUM_PROCESSES and jax.device_count() == NUM_PROCESSES * LOCAL_DEVICES
    return list(argv[3:])
