"""KL-regularized policy-gradient loss of CTRL (paper Sec. 4, Alg. 1: maximize E_π[Φ(u)] − β·KL(π‖π_ref)).

Per prompt p the trainer draws S ≥ 2 samples y_ps from the behaviour policy (the current policy at rollout
time).

Reward and KL (``kl_mode``):
  - ``"k1"`` (default): KL in the reward. R_ps = Φ(u_ps) − β·Σ_t (log π_old − log π_ref)_pst, the k1 estimate
  of the
    sequence KL. With on-policy samples E[(R − b)∇log π] = ∇(E_π[Φ] − β·KL(π‖π_ref)) exactly.
  - ``"k3"``: KL in the loss. R_ps = Φ(u_ps) and the loss adds β·k3 per token, k3 = e^{ρ} − ρ − 1 with
    ρ = log π_ref − log π (Schulman's k3; non-negative, low variance). Its sampled gradient is the gradient
    of the
    reverse KL(π_ref‖π), not of KL(π‖π_ref) — a known bias; use ``k1`` when the exact optimum matters.

Baseline: leave-one-out (RLOO), A_ps = R_ps − (Σ_j R_pj − R_ps)/(S − 1).

Surrogate per token with ratio ρ_t = π/π_old: −A·ρ_t, or PPO's −min(ρ_t·A, clip(ρ_t, 1 − ε, 1 + ε)·A) when
``clip_eps`` is set (used with several epochs per batch). At ρ = 1 both have gradient −A·∇log π.

Normalization (``loss_norm``):
  - ``"sequence"`` (default): per-sample sum over response tokens, mean over the P·S samples — the unbiased
    sequence-level policy gradient (what the theory's optimum assumes).
  - ``"token"``: sum over all response tokens of the batch divided by their count (DAPO-style;
  length-weighted).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from infalign_jax.errors import UsageError

KL_MODES = ("k1", "k3")
LOSS_NORMS = ("sequence", "token")


@dataclass(frozen=True)
class LossConfig:
    beta: float
    kl_mode: str = "k1"
    clip_eps: float | None = None
    loss_norm: str = "sequence"

    def validate(self) -> None:
        if not self.beta > 0:
            raise UsageError(f"beta must be > 0, got {self.beta}")
        if self.kl_mode not in KL_MODES:
            raise UsageError(f"kl_mode must be one of {KL_MODES}, got {self.kl_mode!r}")
        if self.loss_norm not in LOSS_NORMS:
            raise UsageError(f"loss_norm must be one of {LOSS_NORMS}, got {self.loss_norm!r}")
        if self.clip_eps is not None and not 0 < self.clip_eps < 1:
            raise UsageError(f"clip_eps must be in (0, 1) or None, got {self.clip_eps}")


def rloo_advantages(reward_ps: jax.Array) -> jax.Array:
    """Leave-one-out baseline: A_ps = R_ps − mean_{j≠s} R_pj (needs S ≥ 2)."""
    s = reward_ps.shape[1]
    total = jnp.sum(reward_ps, axis=1, keepdims=True)
    return reward_ps - (total - reward_ps) / (s - 1)


def sequence_rewards(phi_ps, old_logp_pst, ref_logp_pst, mask_pst, cfg: LossConfig):
    """Returns (reward_ps, seq_kl_ps): the k1-regularized (or plain) reward and the k1 sequence KL."""
    seq_kl_ps = jnp.sum((old_logp_pst - ref_logp_pst) * mask_pst, axis=-1)
    reward_ps = phi_ps - cfg.beta * seq_kl_ps if cfg.kl_mode == "k1" else phi_ps
    return reward_ps, seq_kl_ps


def _normalize(x_pst, mask_pst, loss_norm):
    if loss_norm == "sequence":
        return jnp.mean(jnp.sum(x_pst * mask_pst, axis=-1))
    return jnp.sum(x_pst * mask_pst) / jnp.maximum(jnp.sum(mask_pst), 1.0)


def pg_loss(logp_pst, old_logp_pst, ref_logp_pst, mask_pst, adv_ps, cfg: LossConfig):
    """Surrogate loss (to minimize) and aux metrics. ``old``/``ref`` logprobs and ``adv_ps`` are constants."""
    mask = mask_pst.astype(jnp.float32)
    old = jax.lax.stop_gradient(old_logp_pst)
    ref = jax.lax.stop_gradient(ref_logp_pst)
    adv = jax.lax.stop_gradient(adv_ps)[:, :, None]
    ratio = jnp.exp(logp_pst - old)
    if cfg.clip_eps is None:
        per_tok = -ratio * adv
        clipped = jnp.zeros_like(ratio)
    else:
        lo, hi = 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps
        unclipped_obj = ratio * adv
        clipped_obj = jnp.clip(ratio, lo, hi) * adv
        per_tok = -jnp.minimum(unclipped_obj, clipped_obj)
        clipped = (clipped_obj < unclipped_obj).astype(jnp.float32)
    loss = _normalize(per_tok, mask, cfg.loss_norm)
    log_ratio_ref = ref - logp_pst
    k3 = jnp.exp(log_ratio_ref) - log_ratio_ref - 1.0
    k3_mean = _normalize(k3, mask, cfg.loss_norm)
    if cfg.kl_mode == "k3":
        loss = loss + cfg.beta * k3_mean
    aux = {
        "pg_loss": loss,
        "clip_frac": jnp.sum(clipped * mask) / jnp.maximum(jnp.sum(mask), 1.0),
        "k3_kl": k3_mean,
    }
    return loss, aux
