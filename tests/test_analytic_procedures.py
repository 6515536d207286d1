"""Procedures as CDF maps, the win rate of CDFs and the exponential transform (infalign_jax.analytic)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infalign_jax.analytic import (
    Procedure,
    best_of_n,
    custom,
    exponential_transform,
    identity,
    kth_of_n,
    parse_procedure,
    rejection,
    win_rate_from_cdfs,
    worst_of_n,
)
from infalign_jax.analytic.objectives import inference_win_rate, uniform_grid
from infalign_jax.analytic.solver import match_kl
from infalign_jax.cli import UsageError

ALL_SPECS = [
    "identity",
    "bon:1",
    "bon:4",
    "won:3",
    "kth:2,5",
    "kth:4,4",
    "rejection:0.5,3",
    "rejection:0.3,1",
]

# A small discrete distribution with unequal atoms: reference masses (cell widths) and a policy's masses.
REF_MASS = np.array([0.1, 0.25, 0.05, 0.3, 0.2, 0.1])
POLICY_MASS = np.array([0.05, 0.1, 0.15, 0.2, 0.2, 0.3])


def _points(mass_c):
    return np.concatenate([[0.0], np.cumsum(mass_c)])


def _selected_cdf_by_enumeration(mass_c, ref_c, select, n):
    """CDF (at the cell boundaries) of the atom chosen by ``select(tuple_of_atoms)`` from n iid draws."""
    out = np.zeros(len(mass_c))
    for draw in itertools.product(range(len(mass_c)), repeat=n):
        out[select(draw)] += np.prod(mass_c[list(draw)])
    return _points(out)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_order_statistics_match_enumeration_of_discrete_draws(n):
    u_m = _points(REF_MASS)
    F_m = _points(POLICY_MASS)
    with jax.enable_x64(True):
        for k in range(1, n + 1):
            want = _selected_cdf_by_enumeration(POLICY_MASS, REF_MASS, lambda d, k=k: sorted(d)[k - 1], n)
            got = kth_of_n(k, n).cdf_map(jnp.asarray(F_m), jnp.asarray(u_m))
            np.testing.assert_allclose(got, want, atol=1e-12)
        np.testing.assert_allclose(
            best_of_n(n).cdf_map(F_m, u_m),
            _selected_cdf_by_enumeration(POLICY_MASS, REF_MASS, max, n),
            atol=1e-12,
        )
        np.testing.assert_allclose(
            worst_of_n(n).cdf_map(F_m, u_m),
            _selected_cdf_by_enumeration(POLICY_MASS, REF_MASS, min, n),
            atol=1e-12,
        )


@pytest.mark.parametrize("n", [1, 2, 3])
def test_rejection_matches_enumeration_when_threshold_is_a_boundary(n):
    u_m = _points(REF_MASS)  # reference quantiles of the atoms' lower edges
    q = u_m[3]  # atoms 3, 4, 5 have u >= q
    F_m = _points(POLICY_MASS)

    def select(draw):
        return next((a for a in draw if u_m[a] >= q), draw[-1])

    want = _selected_cdf_by_enumeration(POLICY_MASS, REF_MASS, select, n)
    with jax.enable_x64(True):
        got = rejection(q, n).cdf_map(jnp.asarray(F_m), jnp.asarray(u_m))
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_win_rate_from_cdfs_is_exact_for_discrete_distributions_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.dirichlet(np.ones(7))
        b = rng.dirichlet(np.ones(7))
        brute = sum(
            a[i] * b[j] * (1.0 if i > j else 0.5 if i == j else 0.0) for i in range(7) for j in range(7)
        )
        with jax.enable_x64(True):
            got = win_rate_from_cdfs(jnp.asarray(_points(a)), jnp.asarray(_points(b)))
        assert abs(float(got) - brute) < 1e-14
    # Identical distributions tie half the time: W = 1/2 exactly; point masses give 1, 0, 1/2.
    assert float(win_rate_from_cdfs(jnp.array([0.0, 1.0, 1.0]), jnp.array([0.0, 0.0, 1.0]))) == 0.0
    assert float(win_rate_from_cdfs(jnp.array([0.0, 0.0, 1.0]), jnp.array([0.0, 1.0, 1.0]))) == 1.0
    assert float(win_rate_from_cdfs(jnp.array([0.0, 0.0, 1.0]), jnp.array([0.0, 0.0, 1.0]))) == 0.5


def test_win_rate_of_continuous_best_of_n_is_second_order_accurate():
    # P(max of 4 uniforms beats one uniform) = 4/5; trapezoid error O(h^2).
    errors = []
    with jax.enable_x64(True):
        for cells in (64, 128):
            u_m = uniform_grid(cells)
            errors.append(abs(float(win_rate_from_cdfs(u_m**4, u_m)) - 0.8))
    assert errors[1] < 1e-4
    assert 3.5 < errors[0] / errors[1] < 4.5


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_reference_policy_has_win_rate_half_under_every_procedure(spec):
    with jax.enable_x64(True):
        u_m = uniform_grid(257)
        w_c = jnp.diff(u_m)
        assert (
            abs(float(jax.jit(inference_win_rate, static_argnums=0)(parse_procedure(spec), w_c, u_m)) - 0.5)
            < 1e-14
        )


def test_procedure_maps_are_cdfs_and_special_cases_agree():
    with jax.enable_x64(True):
        u_m = uniform_grid(200)
        F_m = u_m**2
        for spec in ALL_SPECS:
            G = np.asarray(parse_procedure(spec).cdf_map(F_m, u_m))
            assert abs(G[0]) < 1e-15 and abs(G[-1] - 1.0) < 1e-14 and np.all(np.diff(G) >= -1e-15), spec
        np.testing.assert_allclose(kth_of_n(5, 5).cdf_map(F_m, u_m), F_m**5, atol=1e-13)
        np.testing.assert_allclose(kth_of_n(1, 5).cdf_map(F_m, u_m), 1 - (1 - F_m) ** 5, atol=1e-13)
        np.testing.assert_allclose(
            rejection(0.0, 4).cdf_map(F_m, u_m), F_m, atol=1e-14
        )  # first draw accepted
        np.testing.assert_allclose(rejection(1.0, 4).cdf_map(F_m, u_m), F_m, atol=1e-14)  # last draw kept
        np.testing.assert_allclose(identity().cdf_map(F_m, u_m), F_m)


def test_rejection_matches_monte_carlo_for_a_threshold_inside_a_cell():
    rng = np.random.default_rng(1)
    draws = rng.random((200_000, 3)) ** 0.5  # F(u) = u^2
    ok = draws >= 0.43
    chosen = np.where(ok.any(1), draws[np.arange(len(draws)), ok.argmax(1)], draws[:, -1])
    with jax.enable_x64(True):
        u_m = uniform_grid(1000)
        G = np.asarray(rejection(0.43, 3).cdf_map(u_m**2, u_m))
    for v in (0.2, 0.43, 0.6, 0.9):
        p = np.mean(chosen <= v)
        se = np.sqrt(p * (1 - p) / len(chosen))
        assert abs(G[round(v * 1000)] - p) < 4 * se + 1e-12


def test_parse_procedure_specs_and_equality():
    assert parse_procedure("bon:4") == best_of_n(4)
    assert hash(parse_procedure(" BON:4 ")) == hash(best_of_n(4))
    assert parse_procedure("won:2").spec == "won:2"
    assert parse_procedure("kth:2,5") == kth_of_n(2, 5)
    assert parse_procedure("rejection:0.5,3") == rejection(0.5, 3)
    assert parse_procedure("identity") == identity()
    assert isinstance(parse_procedure("identity"), Procedure)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("bon", "needs 1 argument"),
        ("bon:0", "integer in [1, 1000]"),
        ("bon:2.5", "not an integer"),
        ("won:4,5", "needs 1 argument"),
        ("kth:5,3", "k must be an integer in [1, n=3]"),
        ("rejection:1.5,3", "threshold q must be in [0, 1]"),
        ("rejection:nan,3", "not a finite number"),
        ("best:4", "unknown procedure"),
        ("", "unknown procedure"),
    ],
)
def test_bad_specs_raise_one_usage_error(spec, fragment):
    with pytest.raises(UsageError, match=None) as e:
        parse_procedure(spec)
    assert fragment in str(e.value)


def test_custom_maps_are_validated():
    same_as_bon4 = custom(lambda F: F**4, "pow4")
    with jax.enable_x64(True):
        u_m = uniform_grid(50)
        np.testing.assert_allclose(same_as_bon4.cdf_map(u_m**3, u_m), best_of_n(4).cdf_map(u_m**3, u_m))
    custom(lambda F, u: jnp.where(u < 0.5, 0.0, F), "two-args")  # takes u too; a valid CDF map
    bad = [
        (lambda F: 0.9 * F, "G(1) = 0.9"),
        (lambda F: 1.0 - F, "G(0) = 1"),
        (lambda F: F + 0.1 * jnp.sin(6 * jnp.pi * F), "must be monotone"),
        (lambda F: F[:-1], "shape"),
        (lambda F: np.asarray(F) ** 2, "jittable"),
        (lambda F: jnp.log(F - F), "non-finite"),
        (3, "expected a callable"),
        # Monotone CDF maps the solver cannot differentiate (they returned NaN Φ* with finite W and KL) or
        # that compute in float32 (a contradictory "not reachable" error later): review of 2026-11-27.
        (lambda F: 1.0 - jnp.sqrt(1.0 - F), "non-finite gradient of the win rate"),
        (lambda F: F.astype(jnp.float32) ** 2, "must return float64"),
        (_squared_by_while_loop, "cannot be differentiated"),
    ]
    for fn, fragment in bad:
        with pytest.raises(UsageError) as e:
            custom(fn, "bad")
        assert fragment in str(e.value) and "\n" not in str(e.value)
    # sqrt(F) has finite gradients on the probe policies but not at the optimum: one error from the solver.
    with pytest.raises(UsageError, match="optimal transform for custom:sqrt is not finite"):
        match_kl(custom(lambda F: jnp.sqrt(F), "sqrt"), 0.5)
    # exp(4 log F) is F^4: its dG/dF is NaN at F = 0, which the solver never uses (F(0) is a constant).
    np.testing.assert_allclose(
        match_kl(custom(lambda F: jnp.exp(4.0 * jnp.log(F)), "exp-log"), 0.5).win_rate,
        match_kl("bon:4", 0.5).win_rate,
        atol=1e-12,
    )


def _squared_by_while_loop(F):
    return jax.lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, c[1] * F), (0, jnp.ones_like(F)))[1]


def test_exponential_transform_values_limits_and_stability():
    with jax.enable_x64(True):
        u = jnp.linspace(0.0, 1.0, 11)
        for t in (-7.0, -1.0, 0.3, 2.0, 9.0):
            np.testing.assert_allclose(
                exponential_transform(u, t), np.expm1(t * u) / np.expm1(t), rtol=1e-13, atol=1e-15
            )
        np.testing.assert_allclose(exponential_transform(u, 1e-9), u, atol=1e-9)
        np.testing.assert_allclose(exponential_transform(u, -1e-9), u, atol=1e-9)
        np.testing.assert_array_equal(exponential_transform(u, 0.0), u)
    u32 = jnp.linspace(0.0, 1.0, 101, dtype=jnp.float32)
    for t in (50.0, -50.0, 1e4, -1e4):
        phi = exponential_transform(u32, jnp.float32(t))
        assert phi.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(phi)))
        assert float(phi[0]) == 0.0 and abs(float(phi[-1]) - 1.0) < 1e-6 and bool(jnp.all(jnp.diff(phi) >= 0))
    assert abs(float(exponential_transform(0.5, 50.0)) - np.exp(-25.0)) < 1e-12
    assert abs(float(exponential_transform(0.5, -50.0)) - (1 - np.exp(-25.0))) < 1e-6
    grads = jax.vmap(jax.grad(exponential_transform), in_axes=(0, None))
    for t in (0.0, 3.0, -3.0, 50.0, -50.0):
        g = grads(u32, jnp.float32(t))
        assert bool(jnp.all(jnp.isfinite(g)))
    with jax.enable_x64(True):
        g = jax.grad(exponential_transform)(0.4, 3.0)
        assert abs(float(g) - 3 * np.exp(1.2) / np.expm1(3.0)) < 1e-12


def test_kth_of_n_derivative_is_the_beta_density_for_large_n_and_float32_is_finite():
    """The derivative's scale n·C(n−1, k−1) overflowed int64 from n ≈ 64 (kth:32,64 was an OverflowError in
    every solve); in float32 the clip at 1 − 1e-16 rounded to 1 and G(1) was 0·log 0 = NaN."""
    import math

    with jax.enable_x64(True):
        for k, n in ((32, 64), (500, 1000), (3, 7)):
            grad = jax.grad(lambda F, k=k, n=n: kth_of_n(k, n).cdf_map(F, jnp.zeros(2)))
            for F in (0.3, 0.5, 0.7):
                log_density = (
                    math.log(n)
                    + math.lgamma(n)
                    - math.lgamma(k)
                    - math.lgamma(n - k + 1)
                    + (k - 1) * math.log(F)
                    + (n - k) * math.log1p(-F)
                )  # the Beta(k, n − k + 1) density at F, by hand
                np.testing.assert_allclose(float(grad(jnp.float64(F))), math.exp(log_density), rtol=1e-10)
        edge = jax.grad(lambda F: kth_of_n(4, 4).cdf_map(F, jnp.zeros(2)))
        assert float(edge(jnp.float64(1.0))) == pytest.approx(4.0, rel=1e-12)  # k = n at F = 1: n
    u_m = jnp.linspace(0.0, 1.0, 5, dtype=jnp.float32)
    G = kth_of_n(4, 4).cdf_map(u_m, u_m)  # float32 (x64 off): equals F^4, G(1) = 1
    assert G.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(G), np.asarray(u_m) ** 4, atol=1e-6)
    assert float(G[-1]) == 1.0
