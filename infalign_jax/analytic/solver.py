"""Optimal inference-aware transformations (paper Sec. 3, the theorem on the optimal KL-regularized policy).

For an inference-time procedure T, the policy maximizing W(T(p) ≻ T(π_ref)) − β·KL(p ‖ π_ref) is a tilt
p*(u) ∝ exp(Φ*(u)/β) with Φ* = δW/δp evaluated at p* itself (paper Sec. 3). :func:`solve_optimal` finds this
fixed point on a grid: Φ_k = δW/δp at p_k by ``jax.grad`` of the discretized win rate with respect to the cell
masses, then the damped (mirror-ascent) update log p_{k+1} = (1 − η) log p_k + η (Φ_k/β − log Z) with a
backtracking step η. The residual is span_c(Φ_k − β log p_k/h) (zero exactly at the fixed point; win-rate
units). For T = identity Φ* is affine (Φ*(u) = u + const); for BoN it is close to the exponential Φ_t with
t > 0, for WoN to t < 0 (paper Sec. 3 and the appendix on BoN/WoN).

The grid is :func:`~infalign_jax.analytic.objectives.cosine_grid` (cells clustered at u = 0 and u = 1, where
optimal BoN/WoN policies are steepest); win rates converge as O(M⁻²) (see benchmarks/analytic.py).
The cores are pure and jittable (:func:`optimal_policy` vmaps over β); the public functions validate
inputs, vmap over 1-D β or KL arrays, run in float64 — each enters ``jax.enable_x64`` for its own computation
only (the global flag is untouched) — and return NumPy arrays. Rejection sampling passes its parameters (q, n)
as traced arrays (one compilation serves the family); bon/won keep n static, so that F^n is a few multiplies.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from infalign_jax.analytic.objectives import (
    cell_midpoints,
    cell_widths,
    cosine_grid,
    inference_win_rate,
    kl_to_reference,
    tilt,
)
from infalign_jax.analytic.procedures import TRACEABLE_MAPS, Procedure, parse_procedure
from infalign_jax.analytic.threads import cpu_workers, map_concurrently, split_rows
from infalign_jax.analytic.transforms import exponential_transform
from infalign_jax.errors import UsageError

DEFAULT_CELLS = 1024
DEFAULT_MAX_ITER = 2000
DEFAULT_TOL = 1e-10
LOG_BETA_RANGE = (math.log(1e-10), math.log(1e4))  # β searched in this range when matching a KL budget
MATCH_STEPS = 24  # safeguarded secant steps in log β (each a warm-started solve for the optimal policy)
T_RANGE = 200.0  # best exponential: t searched in [−T_RANGE, T_RANGE]
FRONTIER_CHAINS = 2  # the fewest warm-start chains frontier() uses by default (see its docstring)
MAX_KL = 4.0  # larger KL budgets are rejected (the grid cannot resolve such peaked policies reliably)
# solve_optimal at β below CONTINUATION_FROM follows the optimum down from there in CONTINUATION_STEPS warm-
# started solves: W is not concave for every procedure, and a cold start at small β can land on another fixed
# point (rejection:0.9,16 at β = 1e-3: KL 8.0, J 0.99099 cold vs KL 2.9, J 0.99639 warm; review 2026-11-27).
CONTINUATION_FROM, CONTINUATION_STEPS = 0.3, 8


class OptimalSolution(NamedTuple):
    """Result of :func:`solve_optimal` (a leading batch axis when vmapped over β or KL)."""

    u_c: jax.Array  # (M,) cell midpoints
    phi_c: jax.Array  # (M,) Φ*(u) = δW/δp at the optimum, shifted so that Φ*(0) = 0 (linear extrapolation)
    w_c: jax.Array  # (M,) optimal cell masses (density × cell width)
    beta: jax.Array
    win_rate: jax.Array  # W(T(p*) ≻ T(π_ref)), ties ½
    kl: jax.Array  # KL(p* ‖ π_ref)
    iterations: jax.Array  # mirror-ascent steps (for KL matching: summed over the warm-started bisection)
    residual: jax.Array  # span of Φ − β log(p) at the last iterate (0 at the exact fixed point)


class ExponentialPoint(NamedTuple):
    """The tilted policy p ∝ exp(Φ_t(u)/β) with Φ_t(u) = (e^{tu} − 1)/(e^t − 1) (t = 0: identity Φ(u) = u)."""

    t: jax.Array
    beta: jax.Array
    win_rate: jax.Array
    kl: jax.Array


# ----------------------------------------------------------------------------------------------------------
# Pure cores (float64 inside jit; ``static`` = (map function, static params), ``dynamic`` = traced params).


def _split(procedure: Procedure):
    if procedure.fn in TRACEABLE_MAPS:
        return (procedure.fn, ()), tuple(np.float64(p) for p in procedure.params)
    return (procedure.fn, procedure.params), ()


def _rebuild(static, dynamic) -> Procedure:
    fn, static_params = static
    return Procedure("traced", fn, tuple(static_params) + tuple(dynamic))


def _grid(num_cells: int):
    return cosine_grid(num_cells, dtype=jnp.float64)  # a constant inside jit (computed by NumPy)


def _normalize_phi(phi_c, u_m):
    """Shifts Φ so that its linear extrapolation to u = 0 is 0 (Φ is defined up to a constant)."""
    c_c = cell_midpoints(u_m)
    phi_0 = phi_c[0] - (phi_c[1] - phi_c[0]) * (c_c[0] - u_m[0]) / (c_c[1] - c_c[0])
    return phi_c - phi_0


def _mirror_ascent(procedure: Procedure, beta, u_m, logw_c, max_iter: int, tol):
    """Mirror ascent on J = W − β·KL from log-masses ``logw_c`` (M,) with a backtracking step size.

    Step: log p ← (1 − η) log p + η (Φ/β − log Z) (η = 1 is the plain fixed-point map p ∝ exp(Φ/β)). A step is
    accepted if J increases — or, once J is flat to rounding near the optimum, if the residual shrinks; η then
    grows by 1.5 (at most 1) unless the step reversed direction (an oscillating mode: η halves); a rejected
    step halves η. Stops when the residual span(Φ − β log(p/h)) < ``tol`` or after ``max_iter`` steps.
    The starting point is evaluated by the loop's first pass (a step with η = 0, always accepted), so the
    compiled program holds ONE copy of the win-rate gradient. Returns (log w, Φ, iterations, residual).
    """
    log_h_c = jnp.log(cell_widths(u_m))

    def evaluate(logw, w):
        win, phi = jax.value_and_grad(inference_win_rate, argnums=1)(procedure, w, u_m)
        objective = win - beta * jnp.sum(w * (logw - log_h_c))
        r = phi - beta * (logw - log_h_c)
        return objective, phi, jnp.max(r) - jnp.min(r)

    def cond(state):
        return (state["res"] > tol) & (state["it"] <= max_iter)

    def body(state):
        first = state["it"] == 0
        eta = jnp.where(first, 0.0, state["eta"])
        # log_softmax((1 − η) log p + η (Φ/β + log h)) with a single exp: the normalized masses come with it.
        z = (1.0 - eta) * state["logw"] + eta * (state["phi"] / beta + log_h_c)
        z = z - jnp.max(z)
        e = jnp.exp(z)
        total = jnp.sum(e)
        cand = z - jnp.log(total)
        objective, phi, res = evaluate(cand, e / total)
        old = state["objective"]
        accept = first | (objective > old) | ((res < state["res"]) & (objective > old - 1e-12))
        step = cand - state["logw"]
        reversed_ = jnp.sum(step * state["step"]) < 0  # oscillation: damp even though the step is accepted
        grow = jnp.where(reversed_, 0.5 * eta, jnp.minimum(1.0, 1.5 * eta))
        pick = lambda new, prev: jnp.where(accept, new, prev)
        return {
            "logw": pick(cand, state["logw"]),
            "objective": pick(objective, old),
            "phi": pick(phi, state["phi"]),
            "res": pick(res, state["res"]),
            "step": pick(step, state["step"]),
            "eta": jnp.where(first, 1.0, jnp.where(accept, grow, 0.5 * eta)),
            "it": state["it"] + 1,
        }

    scalar = jnp.zeros_like(beta)
    state = {
        "logw": logw_c,
        "objective": scalar - jnp.inf,
        "phi": jnp.zeros_like(logw_c),
        "res": scalar + jnp.inf,
        "eta": scalar,
        "step": jnp.zeros_like(logw_c),
        "it": jnp.asarray(0),
    }
    state = jax.lax.while_loop(cond, body, state)
    return state["logw"], state["phi"], state["it"] - 1, state["res"]


def optimal_policy(
    procedure: Procedure,
    beta,
    u_m,
    logw0_c=None,
    *,
    max_iter=DEFAULT_MAX_ITER,
    tol=DEFAULT_TOL,
    iterations_before=0,
) -> OptimalSolution:
    """Pure core of :func:`solve_optimal`: jittable (``procedure`` static) and vmappable over ``beta``.

    ``u_m`` (M+1,): grid points; ``logw0_c`` (M,): starting log-masses (default: π_ref). Call it under
    ``jax.enable_x64(True)`` for float64.
    """
    if logw0_c is None:
        logw0_c = jnp.log(cell_widths(u_m))
    logw, phi, it, res = _mirror_ascent(procedure, beta, u_m, logw0_c, max_iter, tol)
    return _solution(procedure, beta, u_m, logw, phi, it + iterations_before, res)


def _solution(procedure, beta, u_m, logw, phi, iterations, residual) -> OptimalSolution:
    w = jnp.exp(logw)
    return OptimalSolution(
        u_c=cell_midpoints(u_m),
        phi_c=_normalize_phi(phi, u_m),
        w_c=w,
        beta=beta,
        win_rate=inference_win_rate(procedure, w, u_m),
        kl=kl_to_reference(w, u_m),
        iterations=iterations,
        residual=residual,
    )


def _match_log_beta(kl_of_log_beta, kl_target, steps: int, carry0):
    """Solves KL(β) = ``kl_target`` for log β (KL decreasing in β) by a safeguarded secant method on
    y = log KL − log target: secant steps, bisection once the root is bracketed and the secant leaves the
    bracket, growing steps (≥ 1 in log β) until it is; clamped to LOG_BETA_RANGE. ``kl_of_log_beta(x, carry)``
    returns (KL, carry) so a solver can warm-start from its previous iterate. Returns (log β, carry) of the
    best point seen (smallest |y|) and the last carry; log KL is nearly linear in log β, so ~10 steps reach
    1e-12. One ``lax.while_loop`` evaluates every point (the two starting points are its first two passes),
    so the evaluation is compiled once; it stops after ``steps`` secant steps or once |y| ≤ 1e-13.
    """
    lo_limit, hi_limit = LOG_BETA_RANGE
    log_target = jnp.log(kl_target)
    inf = jnp.asarray(jnp.inf, jnp.float64)

    def cond(state):
        return (state["s"] < steps + 2) & (jnp.abs(state["best_y"]) > 1e-13)

    def body(state):
        s, x0, y0, x1, y1, lo, hi = (state[k] for k in ("s", "x0", "y0", "x1", "y1", "lo", "hi"))
        slope = (y1 - y0) / jnp.where(x1 == x0, 1.0, x1 - x0)
        usable = (slope < 0) & jnp.isfinite(slope)
        secant = x1 - y1 / jnp.where(usable, slope, -1.0)
        bracketed = jnp.isfinite(lo) & jnp.isfinite(hi)
        inside = (secant > lo) & (secant < hi)
        expand = x1 + jnp.where(y1 > 0, 1.0, -1.0) * jnp.maximum(1.0, jnp.abs(x1 - x0))
        x = jnp.where(usable & inside, secant, jnp.where(bracketed, 0.5 * (lo + hi), expand))
        x = jnp.clip(x, lo_limit, hi_limit)
        x = jnp.where(s == 0, math.log(0.3), jnp.where(s == 1, x1 + jnp.where(y1 > 0, 0.5, -0.5), x))
        kl, carry = kl_of_log_beta(x, state["carry"])
        y = jnp.log(jnp.maximum(kl, 1e-300)) - log_target
        better = jnp.abs(y) < jnp.abs(state["best_y"])
        pick = lambda new, old: jnp.where(better, new, old)
        return {
            "s": s + 1,
            "x0": x1,
            "y0": y1,
            "x1": x,
            "y1": y,
            "lo": jnp.where(y > 0, jnp.maximum(lo, x), lo),
            "hi": jnp.where(y <= 0, jnp.minimum(hi, x), hi),
            "best_x": pick(x, state["best_x"]),
            "best_y": pick(y, state["best_y"]),
            "carry": carry,
            "best_carry": jax.tree.map(pick, carry, state["best_carry"]),
        }

    zero = jnp.zeros((), jnp.float64)
    state = {"s": jnp.asarray(0), "x0": zero, "y0": zero, "x1": zero, "y1": zero, "lo": -inf, "hi": inf}
    state.update(best_x=zero, best_y=inf, carry=carry0, best_carry=carry0)
    state = jax.lax.while_loop(cond, body, state)
    return state["best_x"], state["best_carry"], state["carry"]


def _optimal_at_kl(procedure, kl, u_m, max_iter, tol) -> OptimalSolution:
    """The optimal policy at KL budget ``kl``: the secant in log β over mirror-ascent solves, each
    warm-started from the previous one; the solution at the best β is carried along (no final re-solve)."""
    logw0 = jnp.log(cell_widths(u_m))
    zero = jnp.zeros((), jnp.float64)

    def kl_of(log_beta, carry):
        logw, _, _, total = carry
        logw, phi, it, res = _mirror_ascent(procedure, jnp.exp(log_beta), u_m, logw, max_iter, tol)
        return kl_to_reference(jnp.exp(logw), u_m), (logw, phi, res, total + it)

    carry0 = (logw0, jnp.zeros_like(logw0), zero, jnp.asarray(0))
    log_beta, (logw, phi, res, _), last = _match_log_beta(kl_of, kl, MATCH_STEPS, carry0)
    return _solution(procedure, jnp.exp(log_beta), u_m, logw, phi, last[3], res)


def _exponential_at_beta(procedure, t, beta, u_m):
    w = tilt(exponential_transform(cell_midpoints(u_m), t), beta, u_m)
    return inference_win_rate(procedure, w, u_m), kl_to_reference(w, u_m)


def _tilt_kl(phi_c, beta, u_m):
    """Masses ``w_c`` (M,) and KL of p ∝ exp(Φ/β) from Φ at the cell midpoints: one exp per cell (softmax)
    and no log — on the tilt log(w/h) = Φ/β − log Z, so KL = Σ w·(Φ/β) − log Z."""
    z = phi_c / beta
    z = z - jnp.max(z)
    e = jnp.exp(z) * cell_widths(u_m)
    total = jnp.sum(e)
    w = e / total
    return w, jnp.sum(w * z) - jnp.log(total)


def _exponential_at_kl(procedure, t, kl, u_m) -> ExponentialPoint:
    """The tilt by Φ_t at KL budget ``kl``: the secant in log β evaluates KL only (an exp and two sums per
    cell, no CDF), and the win rate is computed once, at the matched β."""
    phi_c = exponential_transform(cell_midpoints(u_m), t)  # β does not change Φ_t: once per t
    kl_of = lambda log_beta, carry: (_tilt_kl(phi_c, jnp.exp(log_beta), u_m)[1], carry)
    log_beta, _, _ = _match_log_beta(kl_of, kl, MATCH_STEPS, ())
    beta = jnp.exp(log_beta)
    w, kl_value = _tilt_kl(phi_c, beta, u_m)
    win = inference_win_rate(procedure, w, u_m)
    return ExponentialPoint(t=jnp.asarray(t, jnp.float64), beta=beta, win_rate=win, kl=kl_value)


def _exponential_search(procedure, kl, t_fixed, search, u_m, num_t: int = 41, golden_steps: int = 32):
    """The exponential transform Φ_t at KL budget ``kl``: with ``search`` (traced bool) the best t — a coarse
    grid over t (sinh-spaced in [−T_RANGE, T_RANGE], t = 0 included), then a golden-section search between
    the best grid point's neighbours, then the better of the bracket's midpoint and the best grid point —
    else simply t = ``t_fixed``. Every candidate t is matched to the KL budget by the secant in log β.

    One ``lax.while_loop`` whose every pass matches a PAIR of t values (vmapped): passes 0 … ⌈num_t/2⌉ − 1
    scan the grid, the next ``golden_steps`` passes are golden-section steps, the last pass is the final
    comparison (fixed t: a single pass). So the compiled program holds one copy of the KL match, shared by
    :func:`best_exponential`, :func:`exponential_at_kl` and :func:`identity_at_kl`.
    """
    s = jnp.linspace(-1.0, 1.0, num_t)
    t_grid = T_RANGE * jnp.sinh(5.0 * s) / jnp.sinh(5.0)
    coarse = (num_t + 1) // 2
    t_pad = jnp.concatenate([t_grid, t_grid[-1:]])  # an even number of grid points (the last repeated)
    last = coarse + golden_steps
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    match = jax.vmap(lambda t: _exponential_at_kl(procedure, t, kl, u_m))

    def cond(state):
        return state["i"] < jnp.where(search, last + 1, 1)

    def body(state):
        i = state["i"]
        best = jnp.argmax(state["wins"][:num_t])
        start = i == coarse  # the grid is scanned: bracket its best point
        a = jnp.where(start, t_grid[jnp.maximum(best - 1, 0)], state["a"])
        b = jnp.where(start, t_grid[jnp.minimum(best + 1, num_t - 1)], state["b"])
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        pair = jax.lax.dynamic_slice(t_pad, (2 * jnp.minimum(i, coarse - 1),), (2,))
        pair = jnp.where(
            i < coarse, pair, jnp.where(i < last, jnp.stack([c, d]), jnp.stack([0.5 * (a + b), t_grid[best]]))
        )
        pair = jnp.where(search, pair, jnp.stack([t_fixed, t_fixed]))
        points = match(pair)
        win = points.win_rate
        scanned = jax.lax.dynamic_update_slice(state["wins"], win, (2 * jnp.minimum(i, coarse - 1),))
        golden = (i >= coarse) & (i < last)
        left = win[0] >= win[1]
        keep = jnp.where(left, 0, 1)  # the final comparison: the bracket midpoint unless the grid point wins
        return {
            "i": i + 1,
            "wins": jnp.where(i < coarse, scanned, state["wins"]),
            "a": jnp.where(golden & ~left, c, a),
            "b": jnp.where(golden & left, d, b),
            "result": jax.tree.map(lambda x: x[keep], points),
        }

    zero = jnp.zeros((), jnp.float64)
    point = ExponentialPoint(t=zero, beta=zero, win_rate=zero, kl=zero)
    state = {"i": jnp.asarray(0), "wins": jnp.zeros(2 * coarse), "a": zero, "b": zero, "result": point}
    return jax.lax.while_loop(cond, body, state)["result"]


_STATIC = ("static", "num_cells", "max_iter")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _solve_batch(static, dynamic, beta_b, num_cells, max_iter, tol):
    procedure, u_m = _rebuild(static, dynamic), _grid(num_cells)

    def solve(beta):
        # Continuation: β < CONTINUATION_FROM is reached through warm-started solves along a geometric path
        # from CONTINUATION_FROM (for larger β every solve is at β itself and the repeats only evaluate).
        start = jnp.maximum(beta, CONTINUATION_FROM)
        path = start * (beta / start) ** (jnp.arange(CONTINUATION_STEPS + 1) / CONTINUATION_STEPS)
        fresh = jnp.concatenate([jnp.array([True]), path[1:] != path[:-1]])

        def step(carry, b_fresh):  # max_iter per new β of the path; a repeat (β >= 0.3) only evaluates
            (logw, total), (b, is_new) = carry, b_fresh
            budget = jnp.where(is_new, max_iter, 0)
            sol = optimal_policy(procedure, b, u_m, logw, max_iter=budget, tol=tol, iterations_before=total)
            return (jnp.log(sol.w_c), sol.iterations), sol

        sols = jax.lax.scan(step, (jnp.log(cell_widths(u_m)), jnp.asarray(0)), (path, fresh))[1]
        return jax.tree.map(lambda x: x[-1], sols)

    return jax.vmap(solve)(beta_b)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _match_kl_batch(static, dynamic, kl_b, num_cells, max_iter, tol):
    procedure, u_m = _rebuild(static, dynamic), _grid(num_cells)
    return jax.vmap(lambda kl: _optimal_at_kl(procedure, kl, u_m, max_iter, tol))(kl_b)


@functools.partial(jax.jit, static_argnames=("static", "num_cells"))
def _exponential_beta_batch(static, dynamic, t_b, beta_b, num_cells):
    procedure, u_m = _rebuild(static, dynamic), _grid(num_cells)
    win, kl = jax.vmap(lambda t, b: _exponential_at_beta(procedure, t, b, u_m))(t_b, beta_b)
    return ExponentialPoint(t=t_b, beta=beta_b, win_rate=win, kl=kl)


@functools.partial(jax.jit, static_argnames=("static", "num_cells"))
def _exponential_search_batch(static, dynamic, t_b, kl_b, search_b, num_cells):
    procedure, u_m = _rebuild(static, dynamic), _grid(num_cells)
    return jax.vmap(lambda t, kl, search: _exponential_search(procedure, kl, t, search, u_m))(
        t_b, kl_b, search_b
    )


# ----------------------------------------------------------------------------------------------------------
# Public API: validated inputs, float64, scalar or 1-D β / KL (scalars give unbatched results).


def as_procedure(procedure: Procedure | str) -> Procedure:
    """A :class:`Procedure`, parsing a spec string ('bon:4', ...) if needed."""
    if isinstance(procedure, Procedure):
        return procedure
    return parse_procedure(procedure)


def _check_grid(grid) -> int:
    if isinstance(grid, bool) or not isinstance(grid, int | np.integer) or not 16 <= grid <= 1 << 16:
        raise UsageError(f"grid must be an integer number of cells in [16, 65536], got {grid!r}")
    return int(grid)


def _check_iterations(max_iter, tol) -> tuple[int, float]:
    """``(max_iter, tol)`` validated: an integer >= 1 and a finite positive tolerance (max_iter=-1 or
    tol=nan used to return the uniform policy with iterations -1 and no error)."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int | np.integer) or max_iter < 1:
        raise UsageError(f"max_iter must be a positive integer, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, int | float | np.floating) or not 0 < tol < math.inf:
        raise UsageError(f"tol must be a positive finite number, got {tol!r}")
    return int(max_iter), float(tol)


def _as_batch(values, name: str, low: float, high: float):
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim > 1 or arr.size == 0:
        raise UsageError(f"{name} must be a number or a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= low) or np.any(arr > high):
        raise UsageError(f"{name} must be finite and in ({low:g}, {high:g}], got {values!r}")
    return np.atleast_1d(arr), arr.ndim == 0


def _broadcast_with_t(t, values, name: str, low: float, high: float):
    """``((t_b, values_b), scalar)``: ``t`` (a finite number or 1-D array) and the validated ``values``
    broadcast to one 1-D batch; ``scalar`` if both are numbers."""
    values_b, scalar = _as_batch(values, name, low, high)
    t_arr = np.asarray(t, np.float64)
    if t_arr.ndim > 1 or t_arr.size == 0 or not np.all(np.isfinite(t_arr)):
        raise UsageError(f"t must be a finite number or a non-empty 1-D sequence, got {t!r}")
    try:
        t_b, values_b = np.broadcast_arrays(np.atleast_1d(t_arr), values_b)
    except ValueError:
        shapes = f"t (shape {t_arr.shape}) and {name} (shape {values_b.shape})"
        raise UsageError(f"{shapes} do not broadcast") from None
    return (np.array(t_b), np.array(values_b)), scalar and t_arr.ndim == 0


def _unbatch(result, scalar: bool):
    return jax.tree.map(lambda x: x[0], result) if scalar else result


def _rows(call, *arrays_b):
    """``call(*arrays_b)`` for a jitted function vmapped over the leading axis of every array, as NumPy.

    On a multi-core CPU: one call per row, spread over the cores by :func:`threads.map_concurrently` (rows of
    a vmapped batch would run in lockstep on one core), so every batch size uses the one compilation of the
    single-row shape; elsewhere: one call for the whole batch.
    """
    to_numpy = lambda out: jax.tree.map(np.asarray, out)
    n = len(arrays_b[0])
    if n == 1 or not split_rows():
        return to_numpy(call(*arrays_b))
    outs = map_concurrently(lambda i: to_numpy(call(*(a[i : i + 1] for a in arrays_b))), range(n))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def _x64(fn):
    """Runs ``fn`` with 64-bit JAX types for this call only (the global x64 flag is untouched); NumPy out."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.enable_x64(True):
            return jax.tree.map(np.asarray, fn(*args, **kwargs))

    return wrapped


@_x64
def solve_optimal(procedure, beta, *, grid=DEFAULT_CELLS, max_iter=DEFAULT_MAX_ITER, tol=DEFAULT_TOL):
    """The optimal policy p* ∝ exp(Φ*/β) for ``procedure`` at regularization ``beta`` (paper Sec. 3).

    ``beta``: a positive number or a 1-D array (vmapped; results get a leading axis). ``grid``: number of
    cells M. Returns an :class:`OptimalSolution` with Φ* (M,), the masses, W, KL, iterations (summed over the
    continuation path for β < CONTINUATION_FROM, ``max_iter`` per solve of it) and residual. A solve that
    stops at ``max_iter`` with its residual above ``tol`` raises a :class:`NotConvergedWarning`.
    """
    procedure = as_procedure(procedure)
    beta_b, scalar = _as_batch(beta, "beta", 0.0, 1e6)
    static, dynamic = _split(procedure)
    grid, (max_iter, tol) = _check_grid(grid), _check_iterations(max_iter, tol)
    result = _rows(lambda b: _solve_batch(static, dynamic, b, grid, max_iter, tol), beta_b)
    _warn_unconverged(_check_finite(result, procedure), procedure, max_iter, tol, "β", beta_b)
    return _unbatch(result, scalar)


@_x64
def frontier(
    procedure,
    betas,
    *,
    grid=DEFAULT_CELLS,
    max_iter=DEFAULT_MAX_ITER,
    tol=DEFAULT_TOL,
    chains=None,
):
    """The optimal (KL, win rate) frontier over many β by warm-started continuation: the β values sorted in
    decreasing order are dealt round-robin to ``chains`` chains (default: one per CPU core, at least
    FRONTIER_CHAINS), each a ``lax.scan`` that warm-starts every solve from the previous one (far fewer
    mirror-ascent steps than independent solves; dealing round-robin gives every chain a similar share of the
    slow small-β solves). On CPU the chains run side by side on the cores (:func:`_rows`), elsewhere as one
    vmapped call. 64 β for bon:4: 2,061 steps as 1 chain, 2,149 dealt round-robin to 2 chains; see
    docs/analytic.md for times. Returns an :class:`OptimalSolution` batched in the order of ``betas``; solves
    that stop at ``max_iter`` above ``tol`` raise one :class:`NotConvergedWarning`."""
    procedure = as_procedure(procedure)
    beta_b, _ = _as_batch(betas, "betas", 0.0, 1e6)
    n = len(beta_b)
    order = np.argsort(-beta_b, kind="stable")
    if chains is not None and (
        isinstance(chains, bool) or not isinstance(chains, int | np.integer) or chains < 1
    ):
        raise UsageError(f"chains must be a positive integer or None, got {chains!r}")
    chains = default_chains() if chains is None else int(chains)
    chains = max(1, min(chains, n))
    per_chain = -(-n // chains)
    # rank_kc: position in the sorted order of chain k's c-th solve; a short chain repeats its last β
    # (converged at once: a harmless extra solve) so that all chains have one shape.
    rank_kc = np.arange(per_chain)[None, :] * chains + np.arange(chains)[:, None]
    rank_kc = np.where(rank_kc < n, rank_kc, rank_kc - chains)
    static, dynamic = _split(procedure)
    grid, (max_iter, tol) = _check_grid(grid), _check_iterations(max_iter, tol)
    out = _rows(
        lambda beta_kb: _frontier_chains(static, dynamic, beta_kb, grid, max_iter, tol),
        beta_b[order][rank_kc],
    )
    ranks = np.arange(n)
    sorted_out = jax.tree.map(lambda x: x[ranks % chains, ranks // chains], out)
    inverse = np.empty_like(order)
    inverse[order] = ranks
    result = _check_finite(jax.tree.map(lambda x: x[inverse], sorted_out), procedure)
    _warn_unconverged(result, procedure, max_iter, tol, "β", beta_b)
    return result


def default_chains() -> int:
    """frontier()'s default number of chains: one per CPU core, at least FRONTIER_CHAINS."""
    return max(FRONTIER_CHAINS, cpu_workers())


@functools.partial(jax.jit, static_argnames=_STATIC)
def _frontier_chains(static, dynamic, beta_kb, num_cells, max_iter, tol):
    procedure, u_m = _rebuild(static, dynamic), _grid(num_cells)

    def chain(beta_b):
        def step(logw, beta):
            sol = optimal_policy(procedure, beta, u_m, logw, max_iter=max_iter, tol=tol)
            return jnp.log(sol.w_c), sol

        return jax.lax.scan(step, jnp.log(cell_widths(u_m)), beta_b)[1]

    return jax.vmap(chain)(beta_kb)


@_x64
def match_kl(procedure, kl, *, grid=DEFAULT_CELLS, max_iter=DEFAULT_MAX_ITER, tol=DEFAULT_TOL):
    """The optimal policy whose KL(p* ‖ π_ref) equals the budget ``kl`` (bisection on log β inside jit, warm-
    starting each solve from the previous one). ``kl``: a number or a 1-D array (vmapped). If the solve at the
    β found stopped at ``max_iter`` above ``tol``, a :class:`NotConvergedWarning` is raised."""
    procedure = as_procedure(procedure)
    kl_b, scalar = _as_batch(kl, "KL budget", 0.0, MAX_KL)
    static, dynamic = _split(procedure)
    grid, (max_iter, tol) = _check_grid(grid), _check_iterations(max_iter, tol)
    result = _check_finite(
        _rows(lambda kl: _match_kl_batch(static, dynamic, kl, grid, max_iter, tol), kl_b), procedure
    )
    _check_matched(result.kl, kl_b, procedure, "optimal", result.beta)
    _warn_unconverged(result, procedure, max_iter, tol, "KL budget", kl_b)
    return _unbatch(result, scalar)


@_x64
def exponential_point(procedure, t, beta, *, grid=DEFAULT_CELLS) -> ExponentialPoint:
    """W and KL of p ∝ exp(Φ_t(u)/β) (``t`` and ``beta`` numbers or broadcastable 1-D arrays)."""
    procedure = as_procedure(procedure)
    (t_b, beta_b), scalar = _broadcast_with_t(t, beta, "beta", 0.0, 1e6)
    static, dynamic = _split(procedure)
    return _unbatch(_exponential_beta_batch(static, dynamic, t_b, beta_b, _check_grid(grid)), scalar)


@_x64
def exponential_at_kl(procedure, t, kl, *, grid=DEFAULT_CELLS) -> ExponentialPoint:
    """The tilt by Φ_t whose KL equals ``kl`` (β found by bisection). ``t = 0`` is the identity transform."""
    procedure = as_procedure(procedure)
    (t_b, kl_b), scalar = _broadcast_with_t(t, kl, "KL budget", 0.0, MAX_KL)
    static, dynamic = _split(procedure)
    result = _search_rows(static, dynamic, t_b, kl_b, np.zeros(kl_b.shape, bool), grid)
    _check_matched(result.kl, kl_b, procedure, "exponential", result.beta)
    return _unbatch(result, scalar)


def identity_at_kl(procedure, kl, *, grid=DEFAULT_CELLS) -> ExponentialPoint:
    """The identity transform Φ(u) = u (standard RLHF on the calibrated reward) at the KL budget ``kl``."""
    return exponential_at_kl(procedure, 0.0, kl, grid=grid)


@_x64
def best_exponential(procedure, kl, *, grid=DEFAULT_CELLS, warn: bool = True) -> ExponentialPoint:
    """The exponential transform Φ_t with the highest inference-time win rate at the KL budget ``kl``.

    t is searched over both signs in [−T_RANGE, T_RANGE], β in LOG_BETA_RANGE; returns (t, β, W, KL). For
    BoN the best t is positive, for WoN negative (paper Sec. 3, appendix on BoN/WoN). A result on the edge of
    that search (:func:`at_search_limit`) raises a :class:`SearchLimitWarning` unless ``warn`` is False.
    """
    procedure = as_procedure(procedure)
    kl_b, scalar = _as_batch(kl, "KL budget", 0.0, MAX_KL)
    static, dynamic = _split(procedure)
    t_b, search_b = np.zeros_like(kl_b), np.ones(kl_b.shape, bool)
    result = _search_rows(static, dynamic, t_b, kl_b, search_b, grid)
    _check_matched(result.kl, kl_b, procedure, "best exponential", result.beta)
    if warn:
        for i in np.flatnonzero(at_search_limit(result)):
            warnings.warn(
                f"best exponential for {procedure.spec} at KL {kl_b[i]:g} ended on the edge of its search "
                f"(t = {result.t[i]:.4g}, β = {result.beta[i]:.3g}; |t| <= {T_RANGE:g}, β >= "
                f"{math.exp(LOG_BETA_RANGE[0]):.0e}): the family's best lies beyond it, its win rate "
                f"{result.win_rate[i]:.6f} is a lower bound",
                SearchLimitWarning,
                stacklevel=3,
            )
    return _unbatch(result, scalar)


def bon_policy_point(n: int) -> tuple[float, float]:
    """Closed form for the best-of-n policy of π_ref (density n·u^{n−1}): KL = log n − (n − 1)/n and win rate
    n/(n + 1) against π_ref (under T = identity, and also under T = best-of-m for any m; paper Sec. 3)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise UsageError(f"n must be a positive integer, got {n!r}")
    return math.log(n) - (n - 1) / n, n / (n + 1)


@_x64
def bon_policy_win_rate(procedure, n, *, grid=DEFAULT_CELLS):
    """W(T(BoN_n(π_ref)) ≻ T(π_ref)) of the best-of-n policy (masses of u^n), evaluated numerically under
    ``procedure``; ``n`` an integer or a 1-D integer array (one vmapped call)."""
    procedure = as_procedure(procedure)
    n_b = np.atleast_1d(np.asarray(n))
    if n_b.ndim != 1 or not np.issubdtype(n_b.dtype, np.integer) or np.any(n_b < 1):
        raise UsageError(f"n must be a positive integer or a 1-D array of them, got {n!r}")
    static, dynamic = _split(procedure)
    result = _bon_policy_batch(static, dynamic, n_b.astype(np.float64), _check_grid(grid))
    return result if np.ndim(n) else result[0]


@functools.partial(jax.jit, static_argnames=("static", "num_cells"))
def _bon_policy_batch(static, dynamic, n_b, num_cells):
    procedure, u_m = _rebuild(static, dynamic), _grid(num_cells)
    return jax.vmap(lambda n: inference_win_rate(procedure, jnp.diff(u_m**n), u_m))(n_b)


def _search_rows(static, dynamic, t_b, kl_b, search_b, grid):
    grid = _check_grid(grid)
    return _rows(
        lambda t, kl, search: _exponential_search_batch(static, dynamic, t, kl, search, grid),
        t_b,
        kl_b,
        search_b,
    )


def _check_finite(result: OptimalSolution, procedure) -> OptimalSolution:
    """``result``, unless its Φ* or residual is not finite (UsageError naming the procedure): a NaN Φ* used to
    come back with finite W and KL."""
    if not (np.all(np.isfinite(result.phi_c)) and np.all(np.isfinite(result.residual))):
        raise UsageError(
            f"the optimal transform for {procedure.spec} is not finite (NaN/inf in δW/δp): the procedure's "
            "map must be differentiable with finite slopes"
        )
    return result


def _check_matched(kl_found, kl_b, procedure, what, beta_found):
    """UsageError unless every KL found is within 1e-6 of its budget (1e-6 relative above 1) AND within
    1e-4 relative: a tiny budget (e.g. 1e-12) that the β range cannot reach must not pass as matched. The
    message says whether β ran into a limit of LOG_BETA_RANGE or the grid cannot resolve the budget."""
    kl_found, beta_found = np.asarray(kl_found), np.asarray(beta_found)
    miss = np.abs(kl_found - kl_b)
    bad = miss > np.minimum(1e-6 * np.maximum(1.0, kl_b), 1e-4 * kl_b)
    if np.any(bad):
        i = int(np.argmax(bad))
        lo, hi = np.exp(LOG_BETA_RANGE)
        at_limit = beta_found[i] <= lo * (1 + 1e-9) or beta_found[i] >= hi * (1 - 1e-9)
        if at_limit:
            why = f"β reached the limit {beta_found[i]:.3g} of its search range [{lo:.0e}, {hi:.0e}]"
            advice = "a larger budget" if kl_found[i] > kl_b[i] else "a smaller budget"
        else:
            why = "not reachable on this grid"
            advice = "a larger budget" if kl_found[i] > kl_b[i] else "a smaller budget or a finer --grid"
        raise UsageError(
            f"{what} policy for {procedure.spec}: KL budget {kl_b[i]:g}: {why} (closest KL "
            f"{kl_found[i]:.4g}); use {advice}"
        )


def at_search_limit(point: ExponentialPoint) -> np.ndarray:
    """Whether a :func:`best_exponential` result lies on the edge of its search (|t| = T_RANGE or β at the
    lower end of LOG_BETA_RANGE): the family's best is then beyond the search, and its win rate is only a
    lower bound (e.g. won:4 at KL 2: t → −∞ with β → 0). bool, shaped like ``point.t``."""
    lo = math.exp(LOG_BETA_RANGE[0])
    t, beta = np.asarray(point.t), np.asarray(point.beta)
    return (np.abs(t) >= T_RANGE * (1 - 1e-9)) | (beta <= lo * (1 + 1e-3))  # golden section: ~1e-5 above


class SearchLimitWarning(UserWarning):
    """:func:`best_exponential` ended on the edge of its search range (see :func:`at_search_limit`)."""


class NotConvergedWarning(UserWarning):
    """Mirror ascent stopped at ``max_iter`` with its residual still above ``tol``: the Φ*, W and KL returned
    are those of the last iterate, not of the fixed point (:func:`solve_optimal`, :func:`frontier`,
    :func:`match_kl`)."""


def _warn_unconverged(result: OptimalSolution, procedure, max_iter: int, tol: float, name: str, values_b):
    """One :class:`NotConvergedWarning` naming the rows of ``result`` (a batch over ``values_b``, the β or KL
    values called ``name``) whose residual is above ``tol``. Runs on the host after the jitted solve, so it
    fires once per call, whatever was compiled or cached."""
    residual_b = np.atleast_1d(np.asarray(result.residual))
    bad = np.flatnonzero(residual_b > tol)
    if not bad.size:
        return
    rows = ", ".join(f"{values_b[i]:.4g} (residual {residual_b[i]:.2g})" for i in bad[:3])
    more = f" and {bad.size - 3} more" if bad.size > 3 else ""
    warnings.warn(
        f"mirror ascent for {procedure.spec} stopped at max_iter={max_iter} with its residual above "
        f"tol={tol:g} at {bad.size} of {residual_b.size} {name} value(s): {rows}{more}; the result there is "
        "not the fixed point: raise max_iter (or tol)",
        NotConvergedWarning,
        stacklevel=4,  # _warn_unconverged < the public function < its _x64 wrapper < the caller
    )
