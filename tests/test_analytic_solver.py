"""The analytic solver (paper Sec. 3): closed forms, optimality ordering, custom maps, Monte Carlo check."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infalign_jax.analytic import best_of_n, custom, parse_procedure
from infalign_jax.analytic.objectives import (
    cdf_from_masses,
    cosine_grid,
    inference_win_rate,
    kl_to_reference,
    mean_u,
    tilt,
    uniform_grid,
)
from infalign_jax.analytic.solver import (
    NotConvergedWarning,
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
from infalign_jax.cli import UsageError

KLS = [0.25, 0.5, 1.0]  # the CLI's example budgets (same shapes -> the CLI test reuses these compilations)


def identity_tilt_mean(beta):
    """E[u] for p ∝ e^{u/β} on [0, 1]: 1/(1 − e^{−1/β}) − β."""
    return 1.0 / (-math.expm1(-1.0 / beta)) - beta


def identity_tilt_kl(beta):
    """KL(p ‖ U) = E[u]/β − log Z with Z = ∫ e^{u/β} du = β (e^{1/β} − 1)."""
    return identity_tilt_mean(beta) / beta - math.log(beta * math.expm1(1.0 / beta))


def test_identity_tilt_matches_closed_forms_up_to_the_derived_grid_error():
    # The grid tilt's cell masses are exactly proportional to the continuous tilt's (∫_cell e^{u/β} du =
    # h e^{c/β} sinh(h/2β)/(h/2β), the same factor for every cell), so the only errors are within cells: the
    # exact cell mean exceeds the midpoint by h²/(12β); the flat density loses Var(u/β)/2 = h²/(24β²) of KL.
    beta = 0.2
    with jax.enable_x64(True):
        for cells in (256, 1024):
            h = 1.0 / cells
            u_m = uniform_grid(cells)
            w_c = tilt(0.5 * (u_m[1:] + u_m[:-1]), beta, u_m)
            mean, kl = float(mean_u(w_c, u_m)), float(kl_to_reference(w_c, u_m))
            win = float(inference_win_rate(parse_procedure("identity"), w_c, u_m))
            assert abs(win - mean) < 1e-14  # under T = identity, W(p ≻ U) = E_p[u]
            mean_error, kl_error = h**2 / (12 * beta), h**2 / (24 * beta**2)
            assert abs(mean - (identity_tilt_mean(beta) - mean_error)) < 1e-3 * mean_error
            assert abs(kl - (identity_tilt_kl(beta) - kl_error)) < 1e-3 * kl_error


def test_identity_at_kl_hits_the_closed_form_curve():
    # The identity-transform policy p ∝ e^{u/β} does not depend on T; bon:4 shares the fixture's compilation.
    point = identity_at_kl("bon:4", KLS)
    np.testing.assert_allclose(point.kl, KLS, atol=1e-9)
    for kl, beta, win in zip(KLS, point.beta, point.win_rate, strict=True):
        assert abs(identity_tilt_kl(beta) - kl) < 2e-5  # grid error h²/(24β²) < 2e-5 for β > 0.05
        # W(BoN4(p) ≻ BoN4(U)) = ∫ u^4 d(F^4) with F(u) = (e^{u/β} − 1)/(e^{1/β} − 1), by fine quadrature.
        u = np.linspace(0.0, 1.0, 400_001)
        F = np.expm1(u / beta) / np.expm1(1.0 / beta)
        integrand = u**4 * 4 * F**3 * np.exp(u / beta) / (beta * np.expm1(1.0 / beta))
        exact = float(np.sum(0.5 * (integrand[1:] + integrand[:-1]) * np.diff(u)))
        assert abs(win - exact) < 2e-5, (win, exact)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_best_of_n_policy_closed_form(n):
    kl_closed, win_closed = bon_policy_point(n)
    assert kl_closed == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-15) and win_closed == n / (n + 1)
    with jax.enable_x64(True):
        u_m = uniform_grid(1024)
        w_c = jnp.diff(u_m**n)  # density n u^{n-1}
        assert abs(float(kl_to_reference(w_c, u_m)) - kl_closed) < 2e-5
        assert abs(float(inference_win_rate(parse_procedure("identity"), w_c, u_m)) - win_closed) < 1e-6
    # Under T = best-of-m the BoN policy still wins with probability n/(n+1) (T(F) = u^{nm} vs u^m).
    assert abs(bon_policy_win_rate("bon:4", n) - win_closed) < 1e-5


def test_identity_optimal_transform_is_affine():
    sol = solve_optimal("identity", [0.5, 0.1])
    for phi_c in sol.phi_c:
        np.testing.assert_allclose(phi_c, sol.u_c[0], atol=1e-12)  # Φ*(u) = u (+ const, removed: Φ*(0) = 0)
    assert np.all(sol.residual < 1e-10)


@pytest.fixture(scope="module")
def kl_points():
    out = {}
    for spec in ("bon:2", "bon:4", "won:2", "won:4"):
        out[spec] = (match_kl(spec, KLS), best_exponential(spec, KLS), identity_at_kl(spec, KLS))
    return out


def test_optimal_beats_best_exponential_beats_identity_at_equal_kl(kl_points):
    for spec, (opt, expo, ident) in kl_points.items():
        for sol in (opt, expo, ident):
            np.testing.assert_allclose(sol.kl, KLS, atol=1e-7, err_msg=spec)
        assert np.all(opt.residual < 1e-9), spec
        assert np.all(opt.win_rate >= expo.win_rate - 1e-9), (spec, opt.win_rate, expo.win_rate)
        assert np.all(expo.win_rate >= ident.win_rate + 1e-3), (spec, expo.win_rate, ident.win_rate)
        assert np.all(np.diff(opt.win_rate) > 0) and np.all(np.diff(opt.beta) < 0), spec


def test_best_exponential_sign_follows_the_procedure(kl_points):
    for spec, (_, expo, _) in kl_points.items():
        assert np.all(expo.t > 1.0) if spec.startswith("bon") else np.all(expo.t < -1.0), (spec, expo.t)
    # More draws -> a more extreme transform.
    assert np.all(kl_points["bon:4"][1].t > kl_points["bon:2"][1].t)
    assert np.all(kl_points["won:4"][1].t < kl_points["won:2"][1].t)


def test_optimal_transform_is_a_fixed_point_of_the_tilt(kl_points):
    opt = kl_points["bon:4"][0]
    with jax.enable_x64(True):
        u_m = cosine_grid(opt.w_c.shape[-1])  # the solver's grid
        np.testing.assert_allclose(0.5 * (u_m[1:] + u_m[:-1]), opt.u_c[0], atol=1e-15)
        for i in range(len(KLS)):
            w_again = tilt(jnp.asarray(opt.phi_c[i]), opt.beta[i], u_m)
            np.testing.assert_allclose(w_again, opt.w_c[i], rtol=1e-8)
            # ... and Φ* is non-decreasing for best-of-n (flat at the bottom: mass there never gets selected).
            assert np.all(np.diff(opt.phi_c[i]) >= -1e-15) and opt.phi_c[i][-1] > 0.1


def test_frontier_is_the_vmapped_solver_and_monotone():
    betas = np.geomspace(0.05, 2.0, 8)
    front = frontier("bon:4", betas, chains=3)
    assert front.win_rate.shape == (8,) and front.phi_c.shape == (8, 1024)
    assert np.all(np.diff(front.kl) < 0) and np.all(np.diff(front.win_rate) < 0)
    assert np.all(front.residual < 1e-10) and np.all(front.iterations > 0)
    single = solve_optimal("bon:4", betas[3])
    # The same fixed point (to the solver tolerance; vmapped reductions round differently).
    assert abs(single.win_rate - front.win_rate[3]) < 1e-10 and abs(single.kl - front.kl[3]) < 1e-8
    with jax.enable_x64(True):  # the pure core under the caller's own jit + vmap
        u_m = cosine_grid(1024)
        core = jax.jit(jax.vmap(lambda b: optimal_policy(best_of_n(4), b, u_m).win_rate))
        np.testing.assert_allclose(core(jnp.asarray(betas[:3])), front.win_rate[:3], atol=1e-10)


def test_user_map_equal_to_bon4_gives_the_builtin_results():
    user = custom(lambda F: F**4, "my-bon4")
    betas = np.array([0.4, 0.1])
    a, b = solve_optimal(user, betas), solve_optimal("bon:4", betas)
    np.testing.assert_allclose(a.win_rate, b.win_rate, atol=1e-12)
    np.testing.assert_allclose(a.kl, b.kl, atol=1e-12)
    np.testing.assert_allclose(a.phi_c, b.phi_c, atol=1e-9)
    ea, eb = exponential_point(user, 7.0, betas), exponential_point("bon:4", 7.0, betas)
    np.testing.assert_allclose(ea.win_rate, eb.win_rate, atol=1e-13)


def test_monte_carlo_simulation_of_rejection_sampling_from_a_tilted_policy():
    """Sample u from p ∝ exp(Φ_t(u)/β), run rejection:0.6,3 on policy and reference draws (ties ½)."""
    q, n, t, beta = 0.6, 3, 4.0, 0.25
    analytic = exponential_point(f"rejection:{q},{n}", t, beta)
    rng = np.random.default_rng(1234)
    cells, samples = 1024, 400_000
    with jax.enable_x64(True):
        u_m = np.asarray(cosine_grid(cells))  # the solver's grid
        w_c = np.asarray(tilt(exponential_transform(0.5 * (u_m[1:] + u_m[:-1]), t), beta, jnp.asarray(u_m)))
    cell = rng.choice(cells, size=(samples, n), p=w_c / w_c.sum())
    policy_u = u_m[cell] + rng.random((samples, n)) * np.diff(u_m)[cell]  # uniform within the flat cell
    reference_u = rng.random((samples, n))

    def rejection_pick(draws):
        ok = draws >= q
        return np.where(ok.any(1), draws[np.arange(len(draws)), ok.argmax(1)], draws[:, -1])

    a, b = rejection_pick(policy_u), rejection_pick(reference_u)
    wins = (a > b) + 0.5 * (a == b)
    se = wins.std() / math.sqrt(samples)
    assert abs(wins.mean() - analytic.win_rate) < 4 * se, (wins.mean(), analytic.win_rate, se)
    assert abs(analytic.win_rate - 0.5) > 20 * se  # the check is not vacuous
    assert abs(analytic.kl - float(np.sum(w_c * np.log(w_c / np.diff(u_m))))) < 1e-12


def test_bad_solver_inputs_raise_usage_errors():
    for call, fragment in [
        (lambda: solve_optimal("bon:4", -1.0), "beta must be finite and in (0"),
        (lambda: solve_optimal("bon:4", 0.5, grid=3), "grid must be an integer"),
        (lambda: match_kl("bon:4", 9.0), "KL budget must be finite and in (0, 4]"),
        (lambda: match_kl("bon:4", [[0.5]]), "1-D"),
        (lambda: exponential_at_kl("bon:4", 1.0, float("nan")), "finite"),
        (lambda: solve_optimal("bon:x", 0.5), "not an integer"),
        (lambda: bon_policy_point(0), "positive integer"),
        (lambda: match_kl("bon:4", 1e-12, grid=64), "use a larger budget"),  # beta capped at 1e4
        (lambda: exponential_point("bon:4", [1.0, 2.0, 3.0], [0.1, 0.2]), "do not broadcast"),
    ]:
        with pytest.raises(UsageError) as e:
            call()
        assert fragment in str(e.value), str(e.value)


def test_kth_and_rejection_special_cases_equal_their_closed_forms():
    """kth:1,50 IS won:50 and rejection:0,1 IS identity. At small β the optimal masses near u = 0 underflow
    to 0, where kth's clipped log-space sum had a zero gradient (stalled solver, wrong Φ*), and rejection's
    a^(n−1) with a = F(0) = 0, n = 1 had a NaN one; both now match exactly (to the solver's tolerance)."""
    kth, won = (match_kl(spec, 0.13, grid=256) for spec in ("kth:1,50", "won:50"))
    assert kth.iterations < 1000 and kth.residual < 1e-9
    np.testing.assert_allclose(kth.phi_c, won.phi_c, atol=1e-6)
    np.testing.assert_allclose(kth.win_rate, won.win_rate, atol=1e-12)
    rej, ident = (solve_optimal(spec, 0.2, grid=256) for spec in ("rejection:0,1", "identity"))
    assert np.isfinite(rej.residual) and rej.residual < 1e-9
    np.testing.assert_allclose(rej.win_rate, ident.win_rate, atol=1e-12)
    assert parse_procedure(parse_procedure("rejection:0.1234567,3").spec).params == (0.1234567, 3)


def test_exponential_point_broadcasts_t_against_a_scalar_beta():
    both = exponential_point("bon:4", [1.0, 5.0], 0.5)
    one = exponential_point("bon:4", 5.0, [0.5])
    assert both.t.tolist() == [1.0, 5.0] and both.beta.tolist() == [0.5, 0.5]
    assert both.win_rate[1] == one.win_rate[0]


def test_cdf_from_masses_normalizes_exactly():
    with jax.enable_x64(True):
        F = np.asarray(cdf_from_masses(jnp.array([0.1, 0.2, 0.3, 0.4000000000000001])))
    assert F[0] == 0.0 and F[-1] == 1.0 and np.all(F <= 1.0) and np.all(np.diff(F) > 0)


def test_wide_beta_range_reaches_won_at_kl_2_and_flags_search_limits():
    """With β >= 1e-4, won:5-8 and kth:1,8 could not be matched at KL 2 (inside the issue's n <= 8, KL <= 2)
    and the error blamed the grid; the best exponential for won:2 at KL 2 stopped at β = 1e-4 (W 0.99288 vs
    0.99301 by quadrature, review of 2026-11-27). A result on the edge of the t / β search now warns."""
    from infalign_jax.analytic.solver import SearchLimitWarning, at_search_limit

    won6 = match_kl("won:6", 2.0)
    assert abs(won6.kl - 2.0) < 1e-6 and won6.beta < 1e-4 and won6.residual < 1e-9
    won2 = best_exponential("won:2", 2.0)
    assert abs(won2.win_rate - 0.99301) < 1e-5 and won2.beta < 1e-4 and won2.t < -10
    assert not at_search_limit(won2) and not at_search_limit(best_exponential("bon:4", 1.0))
    with pytest.warns(SearchLimitWarning, match="won:4 at KL 2 ended on the edge of its search"):
        won4 = best_exponential("won:4", 2.0)
    assert at_search_limit(won4) and won4.win_rate <= match_kl("won:4", 2.0).win_rate
    with pytest.warns(SearchLimitWarning):  # golden section ends ~1e-5 (relative) above the β limit here
        best_exponential("won:4", 4.0)
    with pytest.raises(UsageError, match="β reached the limit 1e-10 of its search range"):
        match_kl("won:50", 1.0, grid=256)


def test_cold_solve_at_small_beta_follows_the_optimum_down():
    """W is not concave for rejection: a cold start at β = 1e-3 stopped at another fixed point (KL 8.0,
    J = W - β KL = 0.99099) while the warm-started frontier finds KL 2.897, J = 0.99639 (review of
    2026-11-27); solve_optimal now continues from β = 0.3."""
    from infalign_jax.analytic.solver import CONTINUATION_STEPS

    beta = 1e-3
    # rejection converges slowly at small β: at the default max_iter the cold solve stops at residual ~6e-6
    # and 29 of the 40 frontier solves above tol 1e-10 too; each call says so.
    with pytest.warns(NotConvergedWarning, match="rejection:0.9,16 stopped at max_iter=2000"):
        cold = solve_optimal("rejection:0.9,16", beta)
    with pytest.warns(NotConvergedWarning, match="rejection:0.9,16 stopped at max_iter=2000"):
        warm = frontier("rejection:0.9,16", np.geomspace(1.0, beta, 40))
    j = lambda s: s.win_rate - beta * s.kl
    assert abs(cold.kl - warm.kl[-1]) < 1e-3 and j(cold) >= j(warm)[-1] - 1e-7 and j(cold) > 0.9963
    # max_iter per solve of the path: β >= 0.3 is one solve (its 8 repeats used to iterate too: 27 for 3)
    with pytest.warns(NotConvergedWarning):
        assert solve_optimal("bon:4", 1.0, grid=64, max_iter=3).iterations <= 3
    with pytest.warns(NotConvergedWarning):
        assert solve_optimal("bon:4", 0.01, grid=64, max_iter=3).iterations <= 3 * (CONTINUATION_STEPS + 1)


def test_mirror_ascent_stopped_at_max_iter_warns_once_per_call_on_the_host():
    """Mirror ascent that hit max_iter returned its last iterate silently. The check runs on the host after
    the jitted solve: the second call (cached compilation, no trace) warns too, and exactly once."""
    for _ in range(2):
        with pytest.warns(NotConvergedWarning) as caught:
            sol = solve_optimal("bon:4", [1.0, 2.0], grid=64, max_iter=2)
        assert len(caught) == 1 and np.all(sol.residual > 1e-10) and np.all(sol.iterations == 2)
        message = str(caught[0].message)
        assert "bon:4 stopped at max_iter=2 with its residual above tol=1e-10 at 2 of 2 β value(s)" in message
        assert caught[0].filename == __file__  # stacklevel points at the caller
    with pytest.warns(NotConvergedWarning, match="at 3 of 3 β value"):
        frontier("bon:4", [0.5, 1.0, 2.0], grid=64, max_iter=1)
    # A loose tol the first steps meet: converged, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert solve_optimal("bon:4", 1.0, grid=64, max_iter=50, tol=1e-3).residual <= 1e-3


def test_default_settings_on_the_readme_problem_do_not_warn():
    """bon:4 at the README's budgets (the CLI's 0.25 / 0.5 / 1 and the main job's 0.3) and the 64-β frontier:
    every solve meets tol within the default max_iter."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotConvergedWarning)
        opt = match_kl("bon:4", [*KLS, 0.3])
        front = frontier("bon:4", np.geomspace(0.01, 10.0, 64))
    assert np.all(opt.residual <= 1e-10) and np.all(front.residual <= 1e-10)


def test_bad_iteration_settings_are_usage_errors():
    """max_iter=-1 or tol=nan returned the uniform policy with iterations -1 and no error; chains='a' and
    max_iter='x' were bare ValueErrors."""
    for kwargs, fragment in (
        ({"max_iter": -1}, "max_iter must be a positive integer"),
        ({"max_iter": "x"}, "max_iter must be a positive integer"),
        ({"tol": float("nan")}, "tol must be a positive finite number"),
    ):
        with pytest.raises(UsageError, match=fragment):
            solve_optimal("bon:4", 0.3, **kwargs)
    with pytest.raises(UsageError, match="chains must be a positive integer"):
        frontier("bon:4", [0.3, 0.5], chains="a")
