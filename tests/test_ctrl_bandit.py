"""The bandit validation: exact discrete evaluation by hand, and CTRL (the real train step) landing on the
analytic prediction for identity, exp(t>0) and exp(t<0) at a matched KL budget."""

import numpy as np
import pytest

from infalign_jax.analytic.solver import exponential_at_kl
from infalign_jax.cli import load_config_file
from infalign_jax.ctrl import bandit
from infalign_jax.train import train

KL_BUDGET = 0.3
RUNS = {
    "identity": ("identity", 0.0, "identity"),
    "bon": ("exp:8", 8.0, "bon:4"),
    "won": ("exp:-5", -5.0, "won:4"),
}


def load_bandit_config(repo_root):
    return load_config_file(repo_root / "configs" / "ctrl_bandit.py")


def test_exact_calibrated_reward_with_ties():
    u = bandit.exact_calibrated_reward([0.2, 0.3, 0.5], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(u, [0.3 + 0.35, 0.15, 0.3 + 0.35])


def test_discrete_eval_reference_and_point_mass():
    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.ones(50), size=2)
    r = rng.standard_normal((2, 50))
    ev = bandit.discrete_eval(q, q, r)
    assert abs(ev["kl"]) < 1e-6
    for w in ev["win_rate"].values():
        assert abs(w - 0.5) < 1e-5
    top = np.argmax(r[0])
    pi = np.zeros((1, 50))
    pi[0, top] = 1.0
    ev = bandit.discrete_eval(pi, q[:1], r[:1])
    qt = q[0, top]
    np.testing.assert_allclose(ev["kl"], -np.log(qt), rtol=1e-5)
    np.testing.assert_allclose(ev["win_rate"]["standard"], 1 - qt / 2, atol=1e-6)
    np.testing.assert_allclose(ev["win_rate"]["bon:4"], 1 - 0.5 * (1 - (1 - qt) ** 4), atol=1e-6)
    np.testing.assert_allclose(ev["win_rate"]["won:4"], 1 - 0.5 * qt**4, atol=1e-6)


def test_continuous_prediction_identity_closed_form():
    beta = 0.25
    pred = bandit.continuous_prediction(lambda u: u, beta)
    mean_u = 1 / (1 - np.exp(-1 / beta)) - beta  # E[u] under p ∝ exp(u/β) = its win rate against π_ref
    np.testing.assert_allclose(pred["win_rate"]["standard"], mean_u, atol=1e-5)


def test_tabular_policy_samples_its_distribution():
    import jax

    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]], np.float32))
    y = bandit.TabularPolicy().sample(
        {"logits": logits}, {"context": np.array([0])}, jax.random.key(0), 40000
    )
    freq = np.bincount(np.asarray(y["response"]).ravel(), minlength=4) / 40000
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.01)


@pytest.fixture(scope="module")
def runs(repo_root, tmp_path_factory):
    out = {}
    for name, (spec, t, procedure) in RUNS.items():
        cfg = load_bandit_config(repo_root)
        cfg.transform, cfg.procedure = spec, procedure
        cfg.beta = float(exponential_at_kl(procedure, t, KL_BUDGET).beta)
        cfg.progress, cfg.checkpoint_every = False, 0
        out[name] = train(cfg, tmp_path_factory.mktemp(name))
    return out


@pytest.mark.parametrize("name", list(RUNS))
def test_learned_policy_matches_prediction(runs, name):
    res, pred = runs[name], runs[name]["predicted"]
    assert abs(pred["kl"] - KL_BUDGET) < 2e-3  # the chosen β does sit at the KL budget
    assert abs(res["kl"] - pred["kl"]) <= 0.01, (res, pred)
    for proc in ("bon:4", "won:4", "standard"):
        assert abs(res["win_rate"][proc] - pred["win_rate"][proc]) <= 0.01, (proc, res, pred)


def test_prediction_agrees_with_solver(runs):
    spec, t, procedure = RUNS["bon"]
    solver = exponential_at_kl(procedure, t, KL_BUDGET)
    assert abs(runs["bon"]["predicted"]["win_rate"]["bon:4"] - float(solver.win_rate)) < 2e-3


def test_matched_kl_transform_beats_identity(runs):
    ident, bon, won = runs["identity"], runs["bon"], runs["won"]
    assert abs(bon["kl"] - ident["kl"]) < 0.02 and abs(won["kl"] - ident["kl"]) < 0.02
    assert bon["win_rate"]["bon:4"] > ident["win_rate"]["bon:4"] + 0.03
    assert won["win_rate"]["won:4"] > ident["win_rate"]["won:4"] + 0.03


def test_discrete_eval_kl_is_exact_for_tiny_reference_masses():
    """The cell widths are differences of cumulative π_ref masses: in float32 atoms below ~1e-8 got width 0
    and KL(π_ref ‖ π_ref) came out inf (at bandit.ref_scale ≥ 2.5); it is computed in float64 now."""
    problem = bandit.make_bandit(4, 1000, 3.0, 0)
    q = bandit.ref_probs(problem)
    assert q.min() < 1e-9
    assert abs(bandit.discrete_eval(q, q, problem.rewards)["kl"]) < 1e-12
    pi = bandit.tilted_optimum(q, problem.rewards, lambda u: np.asarray(u, np.float64), 0.3)
    direct = np.mean(np.sum(pi * np.log(pi / q), axis=1))  # KL(π ‖ π_ref) by hand, float64
    np.testing.assert_allclose(bandit.discrete_eval(pi, q, problem.rewards)["kl"], direct, rtol=1e-9)
