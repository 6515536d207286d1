"""The exact inference-time win-rate estimator (infalign_jax.evaluate.estimator) and the report statistics.

Checked against brute-force enumeration of every pair of N-subsets (ties on both sides, M_pi != M_ref), the
plain pairwise U-statistic for ``standard``, the null (i.i.d. continuous rewards: W = 1/2 for every procedure)
and closed forms for π = best-of-n of π_ref with uniform rewards (the reward's CDF under π is u^n):

- standard: P(max of n > one) = n/(n+1);
- bon:N vs bon:N: X is the max of nN uniforms, Y the max of N: P(X > Y) = nN/(nN + N) = n/(n+1);
- won:2 with n = 2: G_X(u) = 1 − (1 − u²)², G_Y(u) = 1 − (1 − u)², P(X > Y) = 1 − ∫ (1 − u)² dG_X(u)
  = 1 − 4 ∫ u (1 − u)³ (1 + u) du = 1 − 4 (B(2,4) + B(3,4)) = 1 − 4 (1/20 + 1/60) = 11/15.

Monte-Carlo tolerances: the per-prompt win rates are independent across prompts, so the mean over P prompts
has standard error std/√P; every check allows 4 standard errors (two-sided p ≈ 6e-5, and the seeds are fixed).
"""

import itertools
from math import comb

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infalign_jax.cli import UsageError
from infalign_jax.evaluate import inference_win_rate, parse_selection, selection_weights
from infalign_jax.evaluate.report import bootstrap_indices, kl_estimate, mean_ci, summarize

SPECS = {
    "standard": (1, 1),
    "bon:2": (2, 2),
    "bon:3": (3, 3),
    "won:2": (1, 2),
    "won:4": (1, 4),
    "kth:2,3": (2, 3),
    "kth:2,4": (2, 4),
}


def brute_force(x_m, y_m, k, n):
    """Average over all pairs of N-subsets of [T(policy subset) beats T(reference subset)], ties ½."""
    sx = [sorted(c)[k - 1] for c in itertools.combinations(x_m, n)]
    sy = [sorted(c)[k - 1] for c in itertools.combinations(y_m, n)]
    return float(np.mean([(a > b) + 0.5 * (a == b) for a in sx for b in sy]))


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_matches_brute_force_with_ties_and_unequal_m(spec):
    k, n = SPECS[spec]
    assert parse_selection(spec) == (k, n)
    rng = np.random.default_rng(len(spec))
    for m_pi, m_ref, levels in ((7, 5, 3), (5, 8, 4), (6, 6, 1000)):  # heavy ties, ties, ~no ties
        x = rng.integers(0, levels, (4, m_pi)).astype(np.float64) / 3.0
        y = rng.integers(0, levels, (4, m_ref)).astype(np.float64) / 3.0
        got = inference_win_rate(x, y, spec)
        assert got.dtype == np.float64 and got.shape == (4,)
        want = [brute_force(x[i], y[i], k, n) for i in range(4)]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_standard_is_the_pairwise_u_statistic_and_weights_are_order_statistics():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 5, (6, 9)).astype(float), rng.integers(0, 5, (6, 4)).astype(float)
    u = ((x[:, :, None] > y[:, None, :]) + 0.5 * (x[:, :, None] == y[:, None, :])).mean(axis=(1, 2))
    np.testing.assert_allclose(inference_win_rate(x, y, "standard"), u, rtol=0, atol=1e-15)
    # BoN: the j-th smallest of M is the max of a random N-subset w.p. C(j-1, N-1)/C(M, N); WoN mirrored.
    m, n = 12, 5
    bon = [comb(j - 1, n - 1) / comb(m, n) for j in range(1, m + 1)]
    np.testing.assert_allclose(selection_weights(m, f"bon:{n}"), bon, rtol=1e-15, atol=0)
    np.testing.assert_allclose(selection_weights(m, f"won:{n}"), bon[::-1], rtol=1e-15, atol=0)
    for spec in ("bon:64", "won:3", "kth:17,40"):  # big binomials: exact integers, one rounding per weight
        w = selection_weights(500, spec)
        assert abs(w.sum() - 1.0) < 1e-13 and np.all(w >= 0)
    # Inputs in any order: the estimator sorts.
    perm = rng.permutation(9)
    np.testing.assert_array_equal(
        inference_win_rate(x[:, perm], y, "kth:2,3"), inference_win_rate(x, y, "kth:2,3")
    )


def test_iid_continuous_rewards_give_one_half():
    rng = np.random.default_rng(2)
    p, m, m_ref = 3000, 16, 12
    x, y = rng.normal(size=(p, m)), rng.normal(size=(p, m_ref))
    # Exact null variance of the Mann-Whitney statistic: (m + n + 1) / (12 m n).
    se = np.sqrt((m + m_ref + 1) / (12 * m * m_ref) / p)
    assert abs(inference_win_rate(x, y, "standard").mean() - 0.5) < 4 * se
    for spec in ("bon:4", "won:4", "kth:3,8"):
        w = inference_win_rate(x, y, spec)
        assert abs(w.mean() - 0.5) < 4 * w.std(ddof=1) / np.sqrt(p)
    # Identical samples on both sides: W = 1/2 exactly per prompt (symmetry), whatever the procedure.
    for spec in ("standard", "bon:4", "won:3"):
        np.testing.assert_allclose(inference_win_rate(x, x, spec), 0.5, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    ("n", "spec", "want"),
    [
        (2, "standard", 2 / 3),
        (4, "standard", 4 / 5),
        (3, "bon:2", 3 / 4),
        (2, "bon:4", 2 / 3),
        (2, "won:2", 11 / 15),
    ],
)
def test_best_of_n_policy_closed_forms(n, spec, want):
    rng = np.random.default_rng(n + len(spec))
    p, m = 4000, 12
    y = rng.uniform(size=(p, m))  # π_ref samples (rewards uniform: u = reward)
    x = rng.uniform(size=(p, m, n)).max(axis=-1)  # π = best-of-n of π_ref: each sample the max of n draws
    w = inference_win_rate(x, y, spec)
    se = w.std(ddof=1) / np.sqrt(p)
    assert se < 0.004
    assert abs(w.mean() - want) < 4 * se, (w.mean(), want, se)


def test_jit_matches_numpy_and_bad_input_is_one_usage_error():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 6, (5, 8)).astype(np.float32)  # ties, exactly representable in float32
    y = rng.normal(size=(5, 6)).astype(np.float32)
    fn = jax.jit(inference_win_rate, static_argnums=2)
    for spec in ("standard", "bon:4", "won:2", "kth:2,5"):
        got = fn(jnp.asarray(x), jnp.asarray(y), spec)
        assert got.dtype == jnp.float32 and got.shape == (5,)
        np.testing.assert_allclose(np.asarray(got), inference_win_rate(x, y, spec), rtol=0, atol=1e-6)
    with jax.enable_x64(True):
        got = jax.jit(inference_win_rate, static_argnums=2)(
            jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64), "kth:2,5"
        )
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), inference_win_rate(x, y, "kth:2,5"), rtol=0, atol=1e-14)

    bad = [
        (x, y, "bon:7"),  # N > M of the reference (6)
        (x[:, :3], y, "won:4"),  # N > M of the policy
        (x, y[:4], "standard"),  # prompts differ
        (x[0], y, "standard"),  # not [P, M]
        (x, y, "bon:0"),
        (x, y, "won:"),
        (x, y, "kth:3,2"),
        (x, y, "rejection:0.5,2"),
        (x, y, "garbage"),
        (x, y, 4),
        (np.where(x > 2, np.nan, x), y, "standard"),
    ]
    for args in bad:
        with pytest.raises(UsageError):
            inference_win_rate(*args)


def test_report_statistics():
    rng = np.random.default_rng(4)
    p = 40
    ref = {"j": rng.normal(size=(p, 6))}
    a = {"j": rng.normal(0.5, 1.0, size=(p, 6))}
    rewards = {"reference": ref, "a": a, "b": {"j": a["j"].copy()}}
    lr = rng.normal(0.2, 0.5, size=(p, 6))
    res = summarize(rewards, {"a": lr, "b": np.zeros((p, 6))}, ["standard", "won:2"], "reference", 500, 0)
    w = {(r["policy"], r["procedure"]): r for r in res["win_rates"]}
    for spec in ("standard", "won:2"):
        want = inference_win_rate(a["j"], ref["j"], spec).mean()
        assert w[("a", spec)]["win_rate"] == pytest.approx(want, abs=1e-15)
        lo, hi = w[("a", spec)]["ci95"]
        assert lo < want < hi and hi - lo < 0.5
    # Identical rewards of two policies: the paired difference is exactly 0 in every resample.
    for d in res["paired_differences"]:
        assert (d["policy"], d["baseline"]) == ("a", "b") and d["diff"] == 0.0 and d["ci95"] == [0.0, 0.0]
    # KL: the mean of all log-ratios; SE = std of the per-prompt means / sqrt(P).
    assert res["kl"]["a"]["mean"] == pytest.approx(lr.mean(), abs=1e-15)
    assert res["kl"]["a"]["se"] == pytest.approx(lr.mean(axis=1).std(ddof=1) / np.sqrt(p), rel=1e-12)
    assert res["kl"]["b"] == {"mean": 0.0, "se": 0.0}
    assert kl_estimate(np.ones((1, 3))) == (1.0, None)
    # The bootstrap: seeded, resamples of the prompts; a constant has a degenerate CI.
    idx = bootstrap_indices(p, 7, 3)
    np.testing.assert_array_equal(idx, bootstrap_indices(p, 7, 3))
    assert idx.shape == (7, p) and idx.min() >= 0 and idx.max() < p
    assert mean_ci(np.full(p, 0.25), idx) == (0.25, [0.25, 0.25])
