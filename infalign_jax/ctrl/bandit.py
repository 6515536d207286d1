"""Contextual-bandit validation of CTRL against the analytic theory (paper Sec. 3 optimum, Sec. 4 CTRL).

A tabular policy over V responses per context (``params = {"logits": [C, V]}``), a random reference policy
π_ref
and continuous random rewards. For a transform Φ of the calibrated reward and β > 0 the KL-regularized
optimum is

    π*(y|x) = π_ref(y|x) · exp(Φ(u(x, y))/β) / Z(x),

with u the EXACT calibrated reward: sorting the atoms of a context by reward, u_i = Σ_{j<i} π_ref_j +
½·π_ref_i.
As a distribution of u this is a piecewise-constant density whose cells are the atoms (cell widths = reference
probabilities), so its KL and inference-time win rates are computed EXACTLY with the analytic module's
procedures and
:func:`~infalign_jax.analytic.objectives.win_rate_from_cdfs` on the grid of cumulative reference mass. As V
grows it
converges to the continuous tilt of Uniform[0, 1] that the analytic solver predicts.

The policy is trained by the SAME :class:`~infalign_jax.ctrl.train_step.CtrlTrainer` step as a language model:
sampled responses, online reference samples, calibration, transform, RLOO policy gradient, Adam.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from infalign_jax import config_checks
from infalign_jax.analytic.objectives import inference_win_rate, kl_to_reference, tilt, uniform_grid
from infalign_jax.analytic.procedures import parse_procedure
from infalign_jax.ctrl.problem import CtrlProblem
from infalign_jax.errors import UsageError

EVAL_PROCEDURES = {"bon:4": "bon:4", "won:4": "won:4", "standard": "identity"}


@dataclass(frozen=True)
class TabularPolicy:
    """π(y|x) = softmax(logits[x]) over V responses; a sample is one response id (a single 'token')."""

    def sample(self, params, batch, rng, num_samples: int):
        # Inverse-CDF sampling: O(S log V) per context instead of Gumbel-max's O(S·V).
        probs_pv = jax.nn.softmax(params["logits"][batch["context"]], axis=-1)
        cdf_pv = jnp.cumsum(probs_pv, axis=-1)
        v = cdf_pv.shape[-1]
        x_ps = jax.random.uniform(rng, (cdf_pv.shape[0], num_samples)) * cdf_pv[:, -1:]
        y_ps = jax.vmap(lambda c, x: jnp.searchsorted(c, x, side="right"))(cdf_pv, x_ps)
        return {"response": jnp.minimum(y_ps, v - 1).astype(jnp.int32)}

    def logprobs(self, params, batch, samples):
        logp_pv = jax.nn.log_softmax(params["logits"][batch["context"]], axis=-1)
        logp_ps = jnp.take_along_axis(logp_pv, samples["response"], axis=1)
        return logp_ps[..., None], jnp.ones_like(logp_ps)[..., None]


def bandit_scorer(env, batch, samples):
    """Reward table lookup: r(x, y) = env["rewards"][x, y]."""
    return env["rewards"][batch["context"][:, None], samples["response"]]


@dataclass(frozen=True)
class BanditProblem:
    """Reference logits and rewards [C, V] (float32), generated from a seed."""

    ref_logits: np.ndarray
    rewards: np.ndarray

    @property
    def num_contexts(self) -> int:
        return self.rewards.shape[0]

    def batch(self, position: int, contexts_per_step: int) -> dict:
        """Deterministic batch at a data position: a cyclic window of context ids."""
        ids = (position * contexts_per_step + np.arange(contexts_per_step)) % self.num_contexts
        return {"context": ids.astype(np.int32)}


def make_bandit(num_contexts: int, num_responses: int, ref_scale: float, seed: int) -> BanditProblem:
    rng = np.random.default_rng(seed)
    ref_logits = (ref_scale * rng.standard_normal((num_contexts, num_responses))).astype(np.float32)
    rewards = rng.standard_normal((num_contexts, num_responses)).astype(np.float32)
    return BanditProblem(ref_logits, rewards)


def _softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def exact_calibrated_reward(ref_probs_v, rewards_v) -> np.ndarray:
    """u_i = P_{z~π_ref}[r_z < r_i] + ½ P[r_z = r_i] for every atom (ties handled exactly)."""
    q = np.asarray(ref_probs_v, np.float64)
    r = np.asarray(rewards_v)
    order = np.argsort(r, kind="stable")
    rs, qs = r[order], q[order]
    cum = np.concatenate([[0.0], np.cumsum(qs)])
    lo = np.searchsorted(rs, rs, side="left")
    hi = np.searchsorted(rs, rs, side="right")
    u_sorted = cum[lo] + 0.5 * (cum[hi] - cum[lo])
    u = np.empty_like(u_sorted)
    u[order] = u_sorted
    return u


@partial(jax.jit, static_argnames="specs")
def _kl_and_win_rates_kernel(w_xc, u_xm, specs: tuple[str, ...]):
    def one(w_c, u_m):
        wins = [inference_win_rate(parse_procedure(spec), w_c, u_m) for spec in specs]
        return kl_to_reference(w_c, u_m), jnp.stack(wins)

    return jax.vmap(one)(w_xc, u_xm)


def _kl_and_win_rates(w_xc, u_xm, specs: tuple[str, ...]):
    """KL and win rates [len(specs)] of cell masses w_xc on grids u_xm, vmapped over the leading axis x.

    In float64: the cell widths are differences of cumulative reference masses, and in float32 an atom with
    π_ref below ~1e-8 gets width 0 (KL = inf) or a grossly wrong one. Returns NumPy arrays."""
    with jax.enable_x64(True):
        w_xc, u_xm = jnp.asarray(w_xc, jnp.float64), jnp.asarray(u_xm, jnp.float64)
        return jax.tree.map(np.asarray, _kl_and_win_rates_kernel(w_xc, u_xm, specs))


def _summarize(kl_x, win_xn, procedures) -> dict:
    win_n = np.mean(np.asarray(win_xn, np.float64), axis=0)
    return {
        "kl": float(np.mean(np.asarray(kl_x, np.float64))),
        "win_rate": {name: float(w) for name, w in zip(procedures, win_n, strict=True)},
    }


def discrete_eval(policy_probs_cv, ref_probs_cv, rewards_cv, procedures=EVAL_PROCEDURES) -> dict:
    """Exact KL(π‖π_ref) and win rates W(T(π) ≻ T(π_ref)), averaged over contexts.

    Per context the atoms sorted by reward are grid cells of width π_ref (points = cumulative reference mass);
    the policy's cell masses are its probabilities, so the analytic module's formulas are exact (ties ½ within
    an atom).
    """
    pi, q, r = np.asarray(policy_probs_cv), np.asarray(ref_probs_cv), np.asarray(rewards_cv)
    order = np.argsort(r, axis=1, kind="stable")
    q_sorted = np.take_along_axis(q, order, axis=1)
    cum = np.cumsum(q_sorted, axis=1) / np.sum(q, axis=1, keepdims=True)
    u_cm = np.concatenate([np.zeros((q.shape[0], 1)), cum], axis=1)
    w_cv = np.take_along_axis(pi, order, axis=1) / np.sum(pi, axis=1, keepdims=True)
    kl_c, win_cn = _kl_and_win_rates(w_cv, u_cm, tuple(procedures.values()))
    return _summarize(kl_c, win_cn, procedures)


def tilted_optimum(ref_probs_cv, rewards_cv, phi_fn, beta: float) -> np.ndarray:
    """π* ∝ π_ref · exp(Φ(u)/β) with the exact calibrated reward u of each atom (float64)."""
    out = []
    for q, r in zip(np.asarray(ref_probs_cv), np.asarray(rewards_cv), strict=True):
        u = exact_calibrated_reward(q, r)
        phi = np.asarray(phi_fn(u), np.float64)
        out.append(_softmax(np.log(q) + phi / beta))
    return np.stack(out)


def continuous_prediction(phi_fn, beta: float, procedures=EVAL_PROCEDURES, num_cells: int = 20000) -> dict:
    """The analytic prediction: tilt p(u) ∝ exp(Φ(u)/β) of Uniform[0, 1] (Sec. 3), its KL and win rates."""
    u_m = uniform_grid(num_cells)
    mid = 0.5 * (u_m[1:] + u_m[:-1])
    w_c = tilt(jnp.asarray(phi_fn(mid), jnp.float32), beta, u_m)
    kl_x, win_xn = _kl_and_win_rates(w_c[None], u_m[None], tuple(procedures.values()))
    return _summarize(kl_x, win_xn, procedures)


def ref_probs(problem: BanditProblem) -> np.ndarray:
    return _softmax(problem.ref_logits)


def policy_probs(logits_cv) -> np.ndarray:
    return _softmax(logits_cv)


def evaluate(problem: BanditProblem, logits_cv, transform, beta: float, num_ref: int) -> dict:
    """final_eval.json: exact learned (KL, win rates), the discrete optimum and the analytic prediction."""
    q = ref_probs(problem)
    out = discrete_eval(policy_probs(logits_cv), q, problem.rewards)
    out["predicted"] = None
    out["optimum"] = None
    if transform.uses_u:
        phi = lambda u: np.asarray(transform.phi_of_u(np.asarray(u, np.float32), num_ref), np.float64)
        out["predicted"] = continuous_prediction(phi, beta)
        out["optimum"] = discrete_eval(tilted_optimum(q, problem.rewards, phi, beta), q, problem.rewards)
    return out


def build_problem(config, step_cfg) -> CtrlProblem:
    """The CLI's bandit task (configs/ctrl_bandit.py): tabular policy initialized at π_ref."""
    if step_cfg.reference != "online":
        raise UsageError(
            f"reference={step_cfg.reference!r}: the bandit problem draws its reference rewards online "
            "(offline calibration tables exist for problem 'hh' only)"
        )
    bc = config.bandit
    config_checks.numbers(
        bc,
        (
            ("num_contexts", config_checks.COUNT),
            ("num_responses", dict(integer=True, ge=2)),
            ("ref_scale", {}),
        ),
        prefix="bandit.",
    )
    config_checks.check_array_bytes(  # the evaluation's float64 [C, V] tables
        "the float64 [C, V] tables",
        8 * bc.num_contexts * bc.num_responses,
        "bandit.num_contexts x num_responses",
    )
    if not -1 <= bc.nan_response < bc.num_responses:
        raise UsageError(f"bandit.nan_response must be -1 (off) or a response index, got {bc.nan_response}")
    problem = make_bandit(bc.num_contexts, bc.num_responses, bc.ref_scale, bc.seed)
    rewards = problem.rewards.copy()
    if bc.nan_response >= 0:
        rewards[:, bc.nan_response] = np.nan
    return CtrlProblem(
        policy=TabularPolicy(),
        scorer=bandit_scorer,
        params={"logits": problem.ref_logits},
        ref_params={"logits": problem.ref_logits},
        env={"rewards": rewards},
        batch=lambda position: problem.batch(position, config.prompts_per_step),
        final_eval=lambda params: evaluate(
            problem, params["logits"], step_cfg.transform, step_cfg.loss.beta, step_cfg.num_ref
        ),
    )
