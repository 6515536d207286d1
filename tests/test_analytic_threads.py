"""Analytic solves on host threads: order, x64, errors, nesting; results independent of the split."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infalign_jax.analytic import solver, threads
from infalign_jax.analytic.solver import frontier, match_kl


def test_map_concurrently_keeps_order_x64_and_runs_on_several_threads(monkeypatch):
    monkeypatch.setattr(threads, "cpu_workers", lambda: 2)  # force the pool even on a one-core machine
    barrier = threading.Barrier(2, timeout=30)

    def job(i):
        if i < 2:
            barrier.wait()  # both first calls must be in flight at once, else this times out
        return i, jnp.zeros(()).dtype, threading.current_thread().name

    with jax.enable_x64(True):
        out = threads.map_concurrently(job, range(5))
    assert [i for i, _, _ in out] == list(range(5))
    assert {str(dtype) for _, dtype, _ in out} == {"float64"}  # the caller's x64 context, in every worker
    assert all(name.startswith("infalign-analytic") for _, _, name in out)
    out32 = threads.map_concurrently(lambda i: jnp.zeros(()).dtype, range(3))
    assert {str(d) for d in out32} == {"float32"}


def test_map_concurrently_reraises_and_nests_inline(monkeypatch):
    monkeypatch.setattr(threads, "cpu_workers", lambda: 2)

    def job(i):
        if i == 2:
            raise ValueError("bad item 2")
        # A nested map from a worker runs inline in that worker (no waiting on the pool it occupies).
        inner = threads.map_concurrently(lambda j: threading.current_thread().name, range(3))
        assert len(set(inner)) == 1 and inner[0] == threading.current_thread().name
        return i

    with pytest.raises(ValueError, match="bad item 2"):
        threads.map_concurrently(job, range(4))
    assert threads.map_concurrently(job, [0, 1, 3]) == [0, 1, 3]
    assert threads.map_concurrently(lambda i: threading.current_thread().name, [7]) == [
        threading.current_thread().name
    ]  # a single item runs in the caller's thread


def test_results_do_not_depend_on_how_the_work_is_split(monkeypatch):
    betas = np.geomspace(0.05, 2.0, 7)
    runs = [frontier("bon:4", betas, chains=c) for c in (1, 2, 7)]
    monkeypatch.setattr(solver, "split_rows", lambda: False)  # the accelerator path: one vmapped call
    runs.append(frontier("bon:4", betas, chains=2))
    vmapped = match_kl("bon:4", [0.3, 0.6])
    monkeypatch.undo()
    for run in runs[1:]:  # the same fixed points (to the solver's tolerance) in the order of ``betas``
        np.testing.assert_allclose(run.beta, betas, rtol=0, atol=0)
        np.testing.assert_allclose(run.win_rate, runs[0].win_rate, rtol=0, atol=1e-10)
        np.testing.assert_allclose(run.kl, runs[0].kl, rtol=0, atol=1e-8)
    batch = match_kl("bon:4", [0.3, 0.6])
    singles = [match_kl("bon:4", kl) for kl in (0.3, 0.6)]
    np.testing.assert_allclose(batch.kl, [0.3, 0.6], rtol=1e-6)
    for i, single in enumerate(singles):
        for other in (batch, vmapped):
            assert (
                abs(other.win_rate[i] - single.win_rate) < 1e-10 and abs(other.beta[i] - single.beta) < 1e-8
            )
