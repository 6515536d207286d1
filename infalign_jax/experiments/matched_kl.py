"""Comparing two methods' inference-time win rates at matched KL (InfAlign paper Sec. 5: win rate against
KL(π‖π_ref) frontiers, compared at equal KL).

Each method is a curve of β points: per point its KL estimate (a scalar, the x-axis) and the per-prompt win
rates [P] on the SAME P evaluation prompts (same reference samples). The method's win rate at a KL κ is the
linear interpolation in KL between the two neighbouring β points (points sorted by KL); κ must lie inside
the method's KL range (no extrapolation). Because the interpolation weights depend on the KLs only, the
interpolated mean win rate is the mean over prompts of the interpolated per-prompt win rates, so the paired
bootstrap over prompts (resample prompts once, recompute both methods' interpolated win rates, take
percentiles of the difference) is the bootstrap of the per-prompt interpolated differences. The KLs are held
at their point estimates (the bootstrap covers the win rates' prompt noise, not the KL's).
"""

from __future__ import annotations

import numpy as np


def interpolation_weights(kl_k: np.ndarray, kl: float) -> np.ndarray:
    """float64 [K]: weights w with Σ w = 1 such that the curve's value at ``kl`` is Σ_k w_k · y_k, linear in
    KL between the two points whose KLs bracket ``kl``. ValueError outside [min KL, max KL]."""
    kl_k = np.asarray(kl_k, np.float64)
    if kl_k.ndim != 1 or kl_k.size == 0 or not np.all(np.isfinite(kl_k)):
        raise ValueError(f"need a non-empty 1-D array of finite KLs, got {kl_k!r}")
    lo, hi = float(kl_k.min()), float(kl_k.max())
    if not lo <= kl <= hi:
        raise ValueError(f"KL {kl:g} is outside the curve's range [{lo:g}, {hi:g}]")
    order = np.argsort(kl_k, kind="stable")
    xs = kl_k[order]
    w = np.zeros(kl_k.size)
    j = int(np.searchsorted(xs, kl, side="left"))
    if xs[min(j, xs.size - 1)] == kl:  # on a point (ties in KL: the first of them)
        w[order[j]] = 1.0
        return w
    a, b = order[j - 1], order[j]
    lam = (kl - xs[j - 1]) / (xs[j] - xs[j - 1])
    w[a], w[b] = 1.0 - lam, lam
    return w


def interpolate_per_prompt(kl_k: np.ndarray, win_kp: np.ndarray, kl: float) -> np.ndarray:
    """[P]: the per-prompt win rates of a method at ``kl`` (``win_kp``: per β point k, per prompt p)."""
    return interpolation_weights(kl_k, kl) @ np.asarray(win_kp, np.float64)


def overlap(kl_a_k: np.ndarray, kl_b_k: np.ndarray) -> tuple[float, float] | None:
    """The KL interval inside both curves' ranges, or None when they do not overlap."""
    lo = max(float(np.min(kl_a_k)), float(np.min(kl_b_k)))
    hi = min(float(np.max(kl_a_k)), float(np.max(kl_b_k)))
    return (lo, hi) if lo <= hi else None


def matched_kls(kl_a_k, kl_b_k, targets) -> list[float]:
    """The KLs at which two curves are compared: the ``targets`` inside both ranges; if none is, the
    midpoint of the overlap (one comparison rather than none); [] when the ranges do not overlap."""
    ov = overlap(kl_a_k, kl_b_k)
    if ov is None:
        return []
    inside = [float(t) for t in targets if ov[0] <= t <= ov[1]]
    return inside or [0.5 * (ov[0] + ov[1])]


def compare_at_kl(
    kl_a_k, win_a_kp, kl_b_k, win_b_kp, kl: float, idx_bp: np.ndarray, level: float = 0.95
) -> tuple[float, list[float]]:
    """Method a minus method b at ``kl``: the difference of the interpolated mean win rates and its paired
    percentile bootstrap CI (``idx_bp`` [B, P]: prompt resamples, shared by both methods)."""
    from infalign_jax.evaluate.report import mean_ci

    d_p = interpolate_per_prompt(kl_a_k, win_a_kp, kl) - interpolate_per_prompt(kl_b_k, win_b_kp, kl)
    return mean_ci(d_p, idx_bp, level)
