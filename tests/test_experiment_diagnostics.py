"""The HH experiment's diagnostics (issue 16 §5): each measurement against hand or closed-form values."""

from math import comb

import numpy as np
import pytest

from infalign_jax.experiments import diagnostics as dg


def test_calibrated_counts_ties_half():
    # reference rewards of one prompt: 1, 2, 2, 3; a policy sample of 2 beats 1 and ties two: (1 + 1) / 4.
    ref = np.array([[1.0, 2.0, 2.0, 3.0]])
    pol = np.array([[2.0, 0.0, 3.5]])
    np.testing.assert_allclose(dg.calibrated(pol, ref), [[0.5, 0.0, 1.0]], rtol=0, atol=0)


def test_pair_agreement_by_hand():
    a = np.array([[1.0, 2.0, 3.0]])  # pairs (0,1) (0,2) (1,2): all increasing
    b = np.array([[1.0, 3.0, 2.0]])  # (0,1) up, (0,2) up, (1,2) down: 2 of 3 agree
    frac, n = dg.pair_agreement(a, b)
    assert n == 3 and frac == pytest.approx(2 / 3, abs=1e-15)
    tied = np.array([[1.0, 1.0, 2.0]])  # the tied pair (0,1) is left out: 2 pairs, both agree with a
    assert dg.pair_agreement(a, tied) == (1.0, 2)
    # two prompts: pairs only within a prompt
    frac, n = dg.pair_agreement(np.array([[0.0, 1.0], [0.0, 1.0]]), np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert (frac, n) == (0.5, 2)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_tilt_density_identity_closed_form(beta):
    # p ∝ exp(u/β): E[u] = 1/(1 − e^{−1/β}) − β (the task's closed form)
    u, p = dg.tilt_density(0.0, beta, cells=1 << 16)
    assert np.mean(p) == pytest.approx(1.0, abs=1e-12)
    assert np.mean(u * p) == pytest.approx(1.0 / (1.0 - np.exp(-1.0 / beta)) - beta, abs=1e-8)


def test_tail_theory_uniform_and_point_mass():
    # Under π_ref (β → ∞, u uniform) Binomial(m, u) is uniform on 0..m: P(count <= 1) = 2/(m + 1).
    u, p = dg.tilt_density(0.0, 1e9, cells=1 << 14)
    assert dg.tail_theory(u, p, 8) == pytest.approx(2 / 9, abs=1e-8)
    # A density concentrated near u0: P(Bin(m, u0) <= 1) by hand.
    u = np.array([0.3])
    expected = sum(comb(8, k) * 0.3**k * 0.7 ** (8 - k) for k in range(2))
    assert dg.tail_theory(u, np.array([1.0]), 8) == pytest.approx(expected, abs=1e-15)


def test_kl_needed_interpolates_and_refuses_outside():
    kl = np.array([0.1, 0.2, 0.4])
    win = np.array([0.6, 0.7, 0.8])
    assert dg.kl_needed(kl, win, 0.75) == pytest.approx(0.3, abs=1e-15)
    assert dg.kl_needed(kl, win, 0.55) is None and dg.kl_needed(kl, win, 0.81) is None


def test_prompts_needed_by_hand():
    sd = 0.3
    out = dg.prompts_needed(sd)
    assert out["ci_half_width_0.02"] == int(np.ceil((1.959963984540054 * 0.3 / 0.02) ** 2)) == 865
    z = 1.959963984540054 + 0.8416212335729143
    assert out["power80_paper_low_0.04"] == int(np.ceil((z * 0.3 / 0.04) ** 2)) == 442
    assert out["power80_bandit_0.066"] == int(np.ceil((z * 0.3 / 0.066) ** 2)) == 163


def test_curve_stats_linear_series_exact():
    y = 0.2 + 0.003 * np.arange(100)  # slope 0.3 per 100 steps, no noise
    s = dg.curve_stats(y, window=10)
    assert s["start"] == pytest.approx(0.2 + 0.003 * 4.5, abs=1e-12)
    assert s["end"] == pytest.approx(0.2 + 0.003 * 94.5, abs=1e-12)
    assert s["slope_per_100_steps"] == pytest.approx(0.3, abs=1e-12)
    assert s["slope_se"] == pytest.approx(0.0, abs=1e-12)
    assert s["steps_in_slope"] == 25


def test_theory_row_matches_solver_at_kl():
    """The theory the diagnostics compare a policy with is the solver's: its tilt density has the solver's
    win rate under plain sampling (E[u] = W for the identity procedure) at the solver's β."""
    from infalign_jax.analytic import exponential_at_kl

    pt = exponential_at_kl("identity", -4.0, 0.3)
    u, p = dg.tilt_density(-4.0, float(pt.beta), cells=1 << 16)
    assert np.mean(u * p) == pytest.approx(float(pt.win_rate), abs=2e-5)
