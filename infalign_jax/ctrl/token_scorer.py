"""In-step CTRL reward on the policy's own tokens: no host callback (issue 16, Sec. 4).

:class:`TokenRewardScorer` is the trainer's ``Scorer`` for a policy-token reward model
(``RewardSpec.policy_tokens``, :mod:`infalign_jax.reward.policy_tokens`; e.g. a decoder reward model
initialised from the SFT policy export, ``configs/rm_hh_policy.py``). Because that reward model reads the
policy's vocabulary in the policy's layout, the sampled response ids ``[P, S, L]`` (EOS included, mask 1 up
to and including it) are its response tokens as they are; the reward is one pure jitted function of
token arrays,

    ``r_ps = net(prompt_p ⊗ 1_S, response_psl[..., :R])``, R = the RM's ``max_response_tokens``,

where the RM prompt tokens ``[P, W]`` are made once on the host from the prompt text
(``batch["rm_prompt_bt"]``, exactly as for the MiniLM scorer, so the RM keeps its own prompt budget). Against
:class:`~infalign_jax.ctrl.lm.RewardScorer` this removes the decode / re-tokenize ``pure_callback`` (~43 % of
an HH step with the MiniLM model, docs/ctrl_hh.md) and the single-device gather that callback forces on a
multi-device mesh. Equal to :meth:`~infalign_jax.reward.RewardModel.score_texts` on the decoded texts when
every sample ended with EOS (tests/test_reward_policy_tokens.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from infalign_jax.ctrl.lm import RewardScorer
from infalign_jax.errors import UsageError
from infalign_jax.reward.scoring import RewardModel

SCORERS = ("callback", "in_step")
RM_POLICY_COMMAND = "python -m infalign_jax.train_rm --config configs/rm_hh_policy.py"


def score_policy_tokens(graphdef, state, rm_prompt_pw, rm_prompt_mask_pw, tokens_psl, mask_psl, max_len: int):
    """Rewards float32 [P, S] of S policy responses per prompt (pure, jittable).

    rm_prompt_pw / rm_prompt_mask_pw: the RM's LEFT-padded prompt tokens [P, W]; tokens_psl / mask_psl: the
    policy's response ids and mask [P, S, L] (right-padded: mask is a prefix). Responses keep their first
    ``max_len`` tokens (the RM's ``max_response_tokens``), like :meth:`RewardModel.encode`."""
    p, s, length = tokens_psl.shape
    r = min(length, int(max_len))
    w = rm_prompt_pw.shape[1]
    rep = lambda x: jnp.broadcast_to(x[:, None], (p, s, w)).reshape(p * s, w).astype(jnp.int32)
    net = nnx.merge(graphdef, state)
    rewards = net(
        rep(rm_prompt_pw),
        rep(rm_prompt_mask_pw),
        tokens_psl[..., :r].reshape(p * s, r).astype(jnp.int32),
        mask_psl[..., :r].reshape(p * s, r).astype(jnp.int32),
    )
    return rewards.reshape(p, s).astype(jnp.float32)


class TokenRewardScorer(RewardScorer):
    """``scorer(env, batch, samples) -> rewards_ps`` on the policy's own tokens, all inside the step.

    Refuses a reward model that does not read policy tokens, or whose vocabulary / special ids differ from
    the policy's (its ids would mean other strings)."""

    def __init__(self, rm: RewardModel, policy_tokenizer, policy_bos: int, policy_eos: tuple[int, ...]):
        from infalign_jax.reward.policy_tokens import same_vocabulary

        if not rm.spec.policy_tokens or rm.policy_tokenizer is None:
            raise UsageError(
                "hh.reward_scorer='in_step' needs a reward model trained on policy tokens "
                f"(model.policy_tokens=True, e.g. `{RM_POLICY_COMMAND}`); this one has backbone "
                f"{rm.spec.backbone!r} without it (use hh.reward_scorer='callback')"
            )
        pt = rm.policy_tokenizer
        if not same_vocabulary(rm.tokenizer, policy_tokenizer) or (pt.bos_id, pt.eos_id) != (
            int(policy_bos),
            int(policy_eos[0]),
        ):
            raise UsageError(
                f"the reward model's tokenizer ({rm.spec.decoder_path}) differs from the policy's "
                "(vocabulary or <bos>/<eos> ids): the in-step scorer needs the policy's own tokenizer"
            )
        super().__init__(rm, policy_tokenizer)

    def rm_responses(self, samples):
        """Policy response tokens ARE the RM's response tokens: the first ``max_response_tokens`` of them."""
        r = self.rm.spec.max_response_tokens
        return samples["tokens"][..., :r], samples["mask"][..., :r]

    def __call__(self, env, batch, samples) -> jax.Array:
        return score_policy_tokens(
            self.rm.graphdef,
            env,
            batch["rm_prompt_bt"],
            batch["rm_prompt_mask_bt"],
            samples["tokens"],
            samples["mask"],
            self.rm.spec.max_response_tokens,
        )


def make_scorer(kind: str, rm: RewardModel, policy_tokenizer, policy_bos: int, policy_eos) -> RewardScorer:
    """``hh.reward_scorer``: ``"callback"`` (text round trip on the host, any reward model) or
    ``"in_step"`` (:class:`TokenRewardScorer`, a policy-token reward model)."""
    if kind not in SCORERS:
        raise UsageError(f"hh.reward_scorer must be one of {SCORERS}, got {kind!r}")
    if kind == "in_step":
        return TokenRewardScorer(rm, policy_tokenizer, policy_bos, policy_eos)
    if rm.spec.policy_tokens:
        raise UsageError(
            "this reward model reads policy tokens (model.policy_tokens=True): score it in the step with "
            "hh.reward_scorer='in_step' (the host callback would re-tokenize and add <eos> to cut samples)"
        )
    return RewardScorer(rm, policy_tokenizer)
