"""Benchmark of infalign_jax.analytic against a straightforward NumPy implementation of the same computation.

Same grid (--grid cells, default 1024 = the CLI's default), same iteration scheme (backtracking mirror ascent
with a hand-derived gradient of the win rate, the same stopping rule, the same warm starts; safeguarded secant
in log β with the same early stop; the same t grid + golden-section search), timed in the same run:

  * frontier: the optimal policy at 64 β values (JAX: solver.frontier's warm-started chains, one per core,
    run side by side on the CPU cores; NumPy: the same chains, one after the other, each solve warm-started
    from the previous one);
  * CLI job:  `python -m infalign_jax.analytic --procedure bon:4 --kl 0.25,0.5,1` (optimal, best exponential
              and identity at three KL budgets, without the figure; JAX: command.analyze, its nine solves
              spread over the cores; NumPy: one after the other).

JAX uses every core of the machine (independent solves from host threads, see infalign_jax/analytic/
threads.py); NumPy runs on one. So the wall-time ratio is the end-to-end speed-up a user sees and the
CPU-time ratio the per-core one; both are printed.

Wall time and CPU time (time.process_time: the machine is shared, so wall time includes waiting for a core);
JAX and NumPy runs are interleaved, best of --repeats. JAX compile time = first call − best steady call.
Then a grid-refinement table: the optimal win rate at KL 1 and 2 for M = 128 … 4096 cells, and the BoN-policy
win-rate error against n/(n+1).

    .venv/bin/python benchmarks/analytic.py [--quick] [--grid M] [--skip-refinement]

The ratio depends on M: NumPy's cost per step is mostly per-call overhead at small M, JAX's grows with M
(docs/analytic.md lists the ratios at M = 256 / 512 / 1024).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import jax
import numpy as np

from infalign_jax.analytic import solver
from infalign_jax.analytic.comparison import analyze
from infalign_jax.analytic.solver import (
    bon_policy_point,
    bon_policy_win_rate,
    frontier,
    match_kl,
)

M = 1024
KLS = np.array([0.25, 0.5, 1.0])


# ---------------------------------------------------------------- NumPy baseline (bon:n / won:n only)


class NumpyModel:
    """W(T(p) ≻ T(U)) and its gradient for T = best-of-n / worst-of-n, by hand-derived reverse mode."""

    def __init__(self, n: int, worst: bool, cells: int = M):
        self.n, self.worst = n, worst
        self.u_m = 0.5 * (1.0 - np.cos(np.pi * np.linspace(0.0, 1.0, cells + 1)))  # the solver's cosine grid
        self.c_c = 0.5 * (self.u_m[1:] + self.u_m[:-1])
        self.h = np.diff(self.u_m)
        self.log_h = np.log(self.h)
        G_b = self.T(self.u_m)
        self.mid_b = 0.5 * (G_b[1:] + G_b[:-1])

    def T(self, F):
        return 1.0 - (1.0 - F) ** self.n if self.worst else F**self.n

    def dT(self, F):
        return self.n * (1.0 - F) ** (self.n - 1) if self.worst else self.n * F ** (self.n - 1)

    def win(self, w):
        cum = np.cumsum(w)
        G = self.T(np.concatenate([[0.0], cum / cum[-1]]))
        return float(np.sum(np.diff(G) * self.mid_b))

    def win_and_grad(self, w):
        cum = np.cumsum(w)
        S = cum[-1]
        F = np.concatenate([[0.0], cum / S])
        G = self.T(F)
        win = float(np.sum(np.diff(G) * self.mid_b))
        dG = np.concatenate([[0.0], self.mid_b]) - np.concatenate([self.mid_b, [0.0]])
        dF = dG * self.dT(F)
        tail = np.cumsum(dF[1:][::-1])[::-1]  # Σ_{j ≥ c+1} dW/dF_j
        return win, tail / S - np.sum(dF[1:] * cum) / S**2

    def kl(self, w):
        safe = np.where(w > 0, w, 1.0)
        return float(np.sum(np.where(w > 0, w * (np.log(safe) - self.log_h), 0.0)))

    def mirror_ascent(self, beta, logw, max_iter=solver.DEFAULT_MAX_ITER, tol=solver.DEFAULT_TOL):
        def evaluate(logw):
            w = np.exp(logw)
            win, phi = self.win_and_grad(w)
            r = phi - beta * (logw - self.log_h)
            return win - beta * np.sum(w * (logw - self.log_h)), phi, r.max() - r.min()

        def log_softmax(z):
            z = z - z.max()
            return z - np.log(np.sum(np.exp(z)))

        logw = log_softmax(logw)
        obj, phi, res = evaluate(logw)
        eta, it, prev = 1.0, 0, np.zeros_like(logw)
        while res > tol and it < max_iter:
            cand = log_softmax((1 - eta) * logw + eta * (phi / beta + self.log_h))
            o, p, r = evaluate(cand)
            if o > obj or (r < res and o > obj - 1e-12):
                step = cand - logw
                eta = 0.5 * eta if np.dot(step, prev) < 0 else min(1.0, 1.5 * eta)
                logw, obj, phi, res, prev = cand, o, p, r, step
            else:
                eta *= 0.5
            it += 1
        return logw, phi, it, res

    def solve(self, beta, logw=None):
        logw = self.log_h.copy() if logw is None else logw
        logw, _, _, _ = self.mirror_ascent(beta, logw)
        w = np.exp(logw)
        return self.win_and_grad(w)[0], self.kl(w), logw

    def frontier(self, betas, chains=None):
        """The same warm-started chains as solver.frontier (β sorted decreasing, dealt round-robin to
        ``chains`` chains), solved one chain after the other."""
        order = np.argsort(-betas, kind="stable")
        chains = solver.default_chains() if chains is None else chains
        out = np.empty((len(betas), 2))
        for chain in (order[k::chains] for k in range(chains)):
            logw = None
            for i in chain:
                win, kl, logw = self.solve(betas[i], logw)
                out[i] = win, kl
        return out

    def match_log_beta(self, kl_of, target, steps=solver.MATCH_STEPS):
        lo_limit, hi_limit = solver.LOG_BETA_RANGE
        f = lambda x: math.log(max(kl_of(x), 1e-300)) - math.log(target)
        x0 = math.log(0.3)
        y0 = f(x0)
        if abs(y0) <= 1e-13:
            return x0
        x1 = x0 + (0.5 if y0 > 0 else -0.5)
        y1 = f(x1)
        lo, hi = -math.inf, math.inf
        for x, y in ((x0, y0), (x1, y1)):
            lo, hi = (max(lo, x), hi) if y > 0 else (lo, min(hi, x))
        best_x, best_y = (x1, y1) if abs(y1) < abs(y0) else (x0, y0)
        for _ in range(steps):
            if abs(best_y) <= 1e-13:
                break
            slope = (y1 - y0) / (x1 - x0) if x1 != x0 else 0.0
            usable = slope < 0 and math.isfinite(slope)
            secant = x1 - y1 / slope if usable else x1
            if usable and lo < secant < hi:
                x2 = secant
            elif math.isfinite(lo) and math.isfinite(hi):
                x2 = 0.5 * (lo + hi)
            else:
                x2 = x1 + (1.0 if y1 > 0 else -1.0) * max(1.0, abs(x1 - x0))
            x2 = min(max(x2, lo_limit), hi_limit)
            y2 = f(x2)
            lo, hi = (max(lo, x2), hi) if y2 > 0 else (lo, min(hi, x2))
            if abs(y2) < abs(best_y):
                best_x, best_y = x2, y2
            x0, y0, x1, y1 = x1, y1, x2, y2
        return best_x

    def match_kl(self, kl):
        state = {"logw": self.log_h.copy(), "solutions": {}}

        def kl_of(x):  # warm start from the previous solve; keep each solution (the best one is returned)
            state["logw"] = self.mirror_ascent(math.exp(x), state["logw"])[0]
            state["solutions"][x] = state["logw"]
            return self.kl(np.exp(state["logw"]))

        x = self.match_log_beta(kl_of, kl)
        return self.win_and_grad(np.exp(state["solutions"][x]))[0], math.exp(x)

    def tilt_kl(self, phi, beta):
        """Masses and KL of the tilt p ∝ exp(Φ/β) (KL = Σ w·Φ/β − log Z, as in the solver)."""
        z = phi / beta
        z = z - z.max()
        e = np.exp(z) * self.h
        total = e.sum()
        w = e / total
        return w, float(np.dot(w, z)) - math.log(total)

    def exponential_at_kl(self, t, kl):
        phi = self.c_c if t == 0 else np.expm1(t * self.c_c) / np.expm1(t)  # once per t, as in the solver
        x = self.match_log_beta(lambda x: self.tilt_kl(phi, math.exp(x))[1], kl)  # KL only, as in the solver
        return self.win(self.tilt_kl(phi, math.exp(x))[0]), math.exp(x)

    def best_exponential(self, kl, num_t=41, golden_steps=32):
        s = np.linspace(-1.0, 1.0, num_t)
        t_grid = solver.T_RANGE * np.sinh(5.0 * s) / np.sinh(5.0)
        win_at = lambda t: self.exponential_at_kl(t, kl)[0]
        best = int(np.argmax([win_at(t) for t in t_grid]))
        a, b = t_grid[max(best - 1, 0)], t_grid[min(best + 1, num_t - 1)]
        ratio = (math.sqrt(5.0) - 1.0) / 2.0
        for _ in range(golden_steps):
            c, d = b - ratio * (b - a), a + ratio * (b - a)
            a, b = (a, d) if win_at(c) >= win_at(d) else (c, b)
        refined, coarse = 0.5 * (a + b), t_grid[best]
        return max((win_at(refined), refined), (win_at(coarse), coarse))


# ---------------------------------------------------------------- timing helpers


def clock():
    """(wall, CPU) seconds; CPU = this process's user + system time (all threads)."""
    return time.perf_counter(), time.process_time()


def run_timed(fn):
    wall, cpu = clock()
    out = jax.block_until_ready(fn())
    end_wall, end_cpu = clock()
    return (end_wall - wall, end_cpu - cpu), out


def interleaved(jax_fn, numpy_fn, repeats):
    """First JAX call (compile + run), then ``repeats`` rounds of (JAX, NumPy); best wall and CPU of each."""
    first, _ = run_timed(jax_fn)
    jax_times, np_times = [], []
    for _ in range(repeats):
        t, jax_out = run_timed(jax_fn)
        jax_times.append(t)
        t, np_out = run_timed(numpy_fn)
        np_times.append(t)
    best = lambda ts: tuple(min(t[i] for t in ts) for i in range(2))
    return first, best(jax_times), best(np_times), jax_out, np_out


def report(first, jax_t, np_t):
    compile_t = (first[0] - jax_t[0], first[1] - jax_t[1])
    print(f"  {'':14}{'wall':>9}{'CPU':>9}")
    print(f"  JAX compile   {compile_t[0]:9.3f}{compile_t[1]:9.3f}   (first call − steady call)")
    print(f"  JAX run       {jax_t[0]:9.3f}{jax_t[1]:9.3f}")
    print(f"  NumPy run     {np_t[0]:9.3f}{np_t[1]:9.3f}")
    print(
        f"  speed-up (compiled)  wall x{np_t[0] / jax_t[0]:.1f}   CPU x{np_t[1] / jax_t[1]:.1f};   "
        f"including compilation: wall x{np_t[0] / first[0]:.2f}   CPU x{np_t[1] / first[1]:.2f}"
    )


def cli_job_jax(spec="bon:4", kls=KLS, grid=M):
    """What the CLI computes (command.analyze): (optimal, best exponential, identity) at each budget."""
    return analyze(spec, kls, grid=grid)[1]


def cli_job_numpy(n=4, kls=KLS, grid=M):
    model = NumpyModel(n, worst=False, cells=grid)
    return [(model.match_kl(kl), model.best_exponential(kl), model.exponential_at_kl(0.0, kl)) for kl in kls]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer grid sizes in the refinement table")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved JAX/NumPy rounds (best of)")
    parser.add_argument("--skip-refinement", action="store_true", help="only the timings")
    parser.add_argument("--grid", type=int, default=M, help=f"grid cells of the timed runs (default {M})")
    args = parser.parse_args()
    grid = args.grid
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; grid M = {grid} cells; float64")
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    betas = np.geomspace(0.02, 2.0, 64)

    # ---- frontier (64 β)
    model = NumpyModel(4, worst=False, cells=grid)
    first, jax_t, np_t, front, np_front = interleaved(
        lambda: frontier("bon:4", betas, grid=grid), lambda: model.frontier(betas), args.repeats
    )
    print("\n64-point frontier (bon:4, β in [0.02, 2]; seconds)")
    report(first, jax_t, np_t)
    agree = np.max(np.abs(np_front[:, 0] - front.win_rate))
    print(
        f"  mirror-ascent steps: {int(front.iterations.sum())} in all, max {int(front.iterations.max())} "
        f"per β;   max |W_jax − W_numpy| = {agree:.1e}"
    )

    # ---- the CLI job
    first, jax_t, np_t, (opt, expo, ident), np_out = interleaved(
        lambda: cli_job_jax(grid=grid), lambda: cli_job_numpy(grid=grid), args.repeats
    )
    agree = max(
        max(
            abs(np_out[i][0][0] - opt.win_rate[i]),
            abs(np_out[i][1][0] - expo.win_rate[i]),
            abs(np_out[i][2][0] - ident.win_rate[i]),
        )
        for i in range(len(KLS))
    )
    print(
        f"\nCLI job: --procedure bon:4 --kl 0.25,0.5,1 --grid {grid} "
        "(optimal + best exponential + identity, no figure)"
    )
    report(first, jax_t, np_t)
    print(
        f"  optimal: {int(opt.iterations.sum())} mirror-ascent steps;   max |W_jax − W_numpy| = {agree:.1e}"
    )
    if args.skip_refinement:
        return

    # ---- grid refinement
    grids = [128, 256, 1024] if args.quick else [128, 256, 512, 1024, 2048, 4096]
    specs = ["bon:4", "bon:8", "won:4"]
    for kl in (1.0, 2.0):
        rows = {spec: [float(match_kl(spec, kl, grid=g).win_rate) for g in grids] for spec in specs}
        print(f"\nGrid refinement: optimal win rate at KL = {kl:g} (difference to M = {grids[-1]})")
        print("  " + f"{'M':>6}" + "".join(f"{s:>24}" for s in specs))
        for j, g in enumerate(grids):
            cells = "".join(f"{rows[s][j]:>12.7f} ({rows[s][j] - rows[s][-1]:+.1e})" for s in specs)
            print(f"  {g:>6}{cells}")
    print("\nGrid refinement: BoN-n policy win rate under T = identity vs the closed form n/(n+1)")
    print("  " + f"{'M':>6}" + "".join(f"{'n=' + str(n):>12}" for n in (2, 4, 8)))
    for g in grids:
        errs = [bon_policy_win_rate("identity", n, grid=g) - bon_policy_point(n)[1] for n in (2, 4, 8)]
        print(f"  {g:>6}" + "".join(f"{e:>12.1e}" for e in errs))


if __name__ == "__main__":
    main()
