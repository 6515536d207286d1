"""Analytic InfAlign solver (paper Sec. 3): procedures as CDF maps, win rates, optimal transformations.

The calibrated reward u ∈ [0, 1] is Uniform under π_ref. A policy is described by the density p of u on a
grid; an inference-time procedure T maps the CDF F of u to the CDF G of the selected output. See
docs/analytic.md.
"""

from infalign_jax.analytic.objectives import win_rate_from_cdfs
from infalign_jax.analytic.procedures import (
    Procedure,
    best_of_n,
    custom,
    identity,
    kth_of_n,
    parse_procedure,
    rejection,
    worst_of_n,
)
from infalign_jax.analytic.solver import (
    ExponentialPoint,
    OptimalSolution,
    best_exponential,
    bon_policy_point,
    bon_policy_win_rate,
    exponential_at_kl,
    exponential_point,
    frontier,
    identity_at_kl,
    match_kl,
    optimal_policy,
    solve_optimal,
)
from infalign_jax.analytic.transforms import exponential_transform

__all__ = [
    "ExponentialPoint",
    "OptimalSolution",
    "Procedure",
    "best_exponential",
    "bon_policy_point",
    "bon_policy_win_rate",
    "exponential_at_kl",
    "exponential_point",
    "frontier",
    "identity_at_kl",
    "match_kl",
    "optimal_policy",
    "solve_optimal",
    "best_of_n",
    "custom",
    "exponential_transform",
    "identity",
    "kth_of_n",
    "parse_procedure",
    "rejection",
    "win_rate_from_cdfs",
    "worst_of_n",
]
