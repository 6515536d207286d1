"""Figures for the analytic solver: the win-rate-vs-KL frontier and the shape of Φ* (paper Sec. 3, Fig. 2-3).

Uses matplotlib's object API (``Figure`` + Agg canvas), so no pyplot state or display backend is touched.
"""

from __future__ import annotations

import io

import jax
import numpy as np

from infalign_jax.analytic.solver import (
    MAX_KL,
    best_exponential,
    bon_policy_point,
    bon_policy_win_rate,
    identity_at_kl,
    match_kl,
)
from infalign_jax.analytic.transforms import exponential_transform

CURVE_POINTS = 16  # KL budgets per curve (a fixed batch size, so repeated figures reuse one compilation)


def curve_kls(kl_max: float) -> np.ndarray:
    """The KL budgets (CURVE_POINTS,) at which the curves are drawn: up to 1.3 × the largest requested KL."""
    top = min(MAX_KL, 1.3 * kl_max)
    return np.linspace(top / CURVE_POINTS, top, CURVE_POINTS)


def frontier_figure(procedure, kls, *, grid: int, results=None):
    """Two panels: (left) W(T(p) ≻ T(π_ref)) vs KL for the optimal Φ*, the best exponential Φ_t and the
    identity, with the BoN-policy points; (right) Φ*(u) at the requested budgets ``kls`` (scaled to Φ*(1) = 1)
    next to the best Φ_t. ``results``: (optimal, exponential, identity) over ``kls`` followed by the
    reachable budgets of ``curve_kls(max(kls))``, as ``command.analyze(..., with_curves=True)`` returns them
    (else solved here); the curves are drawn at the KLs the results hold.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kls = np.atleast_1d(np.asarray(kls, np.float64))
    spec = procedure if isinstance(procedure, str) else procedure.spec
    xs = curve_kls(float(kls.max()))
    if results is None:
        batch = np.concatenate([kls, xs])
        results = (
            match_kl(procedure, batch, grid=grid),
            best_exponential(procedure, batch, grid=grid),
            identity_at_kl(procedure, batch, grid=grid),
        )
    k = len(kls)
    optimal, exponential = (jax.tree.map(lambda x: x[:k], r) for r in results[:2])
    curve_opt, curve_exp, curve_id = (jax.tree.map(lambda x: x[k:], r) for r in results)
    xs = np.asarray(curve_id.kl, np.float64)  # the budgets reached (each to 1e-6)

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax_phi = fig.subplots(1, 2)
    x0 = np.concatenate([[0.0], xs])  # every curve starts at π_ref: KL 0, W = 1/2
    ax.plot(x0, np.append(0.5, curve_opt.win_rate), "-", color="C0", lw=2, label="optimal Φ* (solver)")
    ax.plot(x0, np.append(0.5, curve_exp.win_rate), "--", color="C1", lw=2, label="best exponential Φ_t")
    ax.plot(x0, np.append(0.5, curve_id.win_rate), ":", color="C2", lw=2, label="identity Φ(u) = u")
    ax.plot(kls, optimal.win_rate, "o", color="C0", ms=5)
    top = xs[-1] if len(xs) else float(kls.max())
    bon_n = [n for n in range(2, 65) if bon_policy_point(n)[0] <= top]
    if bon_n:
        bon_kl = [bon_policy_point(n)[0] for n in bon_n]
        bon_w = bon_policy_win_rate(procedure, np.array(bon_n), grid=grid)
        ax.plot(bon_kl, bon_w, "k^", ms=6, label="BoN-n policy of π_ref (n = 2, 3, …)")
    ax.set_xlabel("KL(π ‖ π_ref)")
    ax.set_ylabel(f"win rate  W(T(π) ≻ T(π_ref)),  T = {spec}")
    ax.set_title(f"Inference-time win rate vs KL ({spec})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)

    for i, kl in enumerate(kls):
        phi = optimal.phi_c[i] / optimal.phi_c[i][-1]
        ax_phi.plot(optimal.u_c[i], phi, "-", color=f"C{i}", lw=2, label=f"Φ* at KL {kl:g}")
        t = float(exponential.t[i])
        ax_phi.plot(
            optimal.u_c[i],
            exponential_transform(optimal.u_c[i], t),
            "--",
            color=f"C{i}",
            lw=1,
            label=f"Φ_t, t = {t:.2f}",
        )
    ax_phi.plot([0, 1], [0, 1], ":", color="gray", lw=1, label="identity")
    ax_phi.set_xlabel("calibrated reward u")
    ax_phi.set_ylabel("transformed reward (scaled to Φ(1) = 1)")
    ax_phi.set_title("Shape of the optimal transformation Φ*")
    ax_phi.grid(alpha=0.3)
    ax_phi.legend(loc="upper left", fontsize=8)
    return fig


def figure_png_bytes(fig) -> bytes:
    """Renders ``fig`` to PNG bytes (to be written atomically)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
