"""The analytic comparison (paper Sec. 3): optimal Φ* vs the best exponential vs identity at KL budgets.

:func:`analyze` solves all three at each requested KL for one inference-time procedure and returns the JSON
report (win rates and β) with the raw solver results; :func:`transform_npz_bytes` serializes Φ* on [0, 1] for
the CTRL trainer's ``table:PATH`` transform. Library functions: the command line
``python -m infalign_jax.analytic`` (:mod:`infalign_jax.commands.analytic`) and the main job
(:mod:`infalign_jax.main`) call them.
"""

from __future__ import annotations

import io

import jax
import numpy as np

from infalign_jax.analytic.plotting import curve_kls
from infalign_jax.analytic.solver import (
    DEFAULT_CELLS,
    as_procedure,
    best_exponential,
    identity_at_kl,
    match_kl,
)
from infalign_jax.analytic.threads import map_concurrently
from infalign_jax.errors import UsageError


def analyze(procedure, kls, *, grid: int = DEFAULT_CELLS, with_curves: bool = False):
    """The JSON report ``{"procedure": spec, "points": [{"kl", "optimal": {"win_rate", "beta"}, "exponential":
    {"t", "win_rate", "beta"}, "identity": {"win_rate", "beta"}}, ...]}`` (every entry at its requested KL to
    1e-6) and the raw results (optimal, exponential, identity) over ``kls`` followed, with ``with_curves``, by
    the figure's curve budgets that all three solvers reach on this grid (unreachable ones are left out; a
    requested budget that is unreachable is a UsageError). Every (solver, budget) pair is its own call, all
    spread over the CPU cores at once (:func:`~infalign_jax.analytic.threads.map_concurrently`)."""
    procedure = as_procedure(procedure)
    kls = np.asarray(kls, np.float64)
    batch = np.concatenate([kls, curve_kls(float(kls.max()))]) if with_curves else kls
    solvers = (best_exponential, match_kl, identity_at_kl)
    jobs = [(solve, float(kl), i >= len(kls)) for solve in solvers for i, kl in enumerate(batch)]

    def run(job):
        solve, kl, curve_point = job
        quiet = {"warn": False} if solve is best_exponential and curve_point else {}  # figure-only budgets
        try:
            return solve(procedure, kl, grid=grid, **quiet)
        except UsageError:
            if not curve_point:
                raise
            return None  # a curve budget beyond this grid's reach: the curves stop before it

    results = map_concurrently(run, jobs)
    parts = [results[i * len(batch) : (i + 1) * len(batch)] for i in range(3)]
    keep = [i for i in range(len(batch)) if all(part[i] is not None for part in parts)]
    stack = lambda part: jax.tree.map(lambda *xs: np.stack(xs), *(part[i] for i in keep))
    expo, opt, ident = (stack(part) for part in parts)
    points = [
        {
            "kl": float(kl),
            "optimal": {"win_rate": float(opt.win_rate[i]), "beta": float(opt.beta[i])},
            "exponential": {
                "t": float(expo.t[i]),
                "win_rate": float(expo.win_rate[i]),
                "beta": float(expo.beta[i]),
            },
            "identity": {"win_rate": float(ident.win_rate[i]), "beta": float(ident.beta[i])},
        }
        for i, kl in enumerate(kls)
    ]
    return {"procedure": procedure.spec, "points": points}, (opt, expo, ident)


def transform_npz_bytes(solution, spec: str, grid: int) -> bytes:
    """Φ* on [0, 1]: the cell midpoints plus both ends (linear extrapolation), as an NPZ file's bytes."""
    u_c, phi_c = np.asarray(solution.u_c), np.asarray(solution.phi_c)
    phi_1 = phi_c[-1] + (phi_c[-1] - phi_c[-2]) * (1.0 - u_c[-1]) / (u_c[-1] - u_c[-2])
    u = np.concatenate([[0.0], u_c, [1.0]])
    phi = np.concatenate([[0.0], phi_c, [phi_1]])  # Φ*(0) = 0 by the solver's normalization
    buffer = io.BytesIO()
    np.savez(
        buffer,
        u=u,
        phi=phi,
        procedure=np.str_(spec),
        beta=np.float64(solution.beta),
        kl=np.float64(solution.kl),
        grid=np.int64(grid),
    )
    return buffer.getvalue()
