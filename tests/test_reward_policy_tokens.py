"""Policy-token reward models and the in-step CTRL scorer (issue 16, Sec. 4).

A decoder reward model with ``policy_tokens=True`` on the tiny Llama fixture (the "policy"): its text
layout is the policy's (prompt encoder, SFT reply + <eos>); the in-step scorer on policy token arrays equals
the reward model's own scoring of the same texts and tokens (1e-5); the CTRL step on that path holds no host
callback (the MiniLM-style callback path does); mismatched reward models / scorers are refused.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infalign_jax.cli import UsageError
from infalign_jax.reward import RewardSpec, build_reward_model, load_reward_model, save_reward_model


def _spec(policy, **kw):
    base = dict(
        backbone="decoder",
        decoder_path=str(policy),
        policy_tokens=True,
        max_prompt_tokens=24,
        max_response_tokens=12,
        length_buckets=(8, 16, 32),
        batch_buckets=(4, 16),
    )
    return RewardSpec(**{**base, **kw})


@pytest.fixture(scope="module")
def setup(hh_dir, repo_root, tmp_path_factory):
    """HH data in tmp, the fixture policy, and a saved policy-token RM with a random head (and one without
    policy tokens, for the refusals)."""
    from infalign_jax.data.hh import build_hh, load_hh

    root = tmp_path_factory.mktemp("rm_policy_tokens")
    build_hh(hh_dir, root / "data")
    policy = repo_root / "tests" / "fixtures" / "models" / "llama"
    for name, spec in (("rm", _spec(policy)), ("rm_text", _spec(policy, policy_tokens=False))):
        rm = build_reward_model(spec, seed=0)
        net = rm.net
        # Rewards of O(1), as a trained head gives (a unit-normal kernel on 192 standardized features gives
        # O(10), where float32 roundoff of the forward pass alone is ~1e-5).
        shape = net.head.out.kernel[...].shape
        net.head.out.kernel[...] = 0.1 * jax.random.normal(jax.random.key(1), shape)
        rm.set_net(net)
        save_reward_model(rm, root / name)
    src = load_hh("train", root / "data")
    records = [src[i] for i in range(6)]
    return {"root": root, "policy": policy, "records": records}


def test_spec_json_and_validation(setup):
    spec = _spec(setup["policy"])
    assert RewardSpec.from_json(spec.to_json()) == spec
    # Without policy tokens the saved spec has no new key: content digests of older models are unchanged.
    assert "policy_tokens" not in _spec(setup["policy"], policy_tokens=False).to_json()
    with pytest.raises(UsageError, match="policy_tokens needs backbone='decoder'"):
        RewardSpec(backbone="minilm", policy_tokens=True)


def test_encode_uses_the_policy_layout(setup):
    """Prompt = the policy's prompt encoder; reply = ' ' + reply + <eos>, i.e. [prompt | reply] is exactly
    the SFT sequence of the dialogue; a reply over the budget keeps its first tokens and loses <eos>."""
    from infalign_jax.data.encoders import prompt_encoder, sft_encoder

    rm = load_reward_model(setup["root"] / "rm")
    tok = rm.tokenizer
    bos, eos = rm.policy_tokenizer.bos_id, rm.policy_tokenizer.eos_id
    assert (bos, eos) == (tok.bos_token_id, tok.eos_token_id)
    rec = {"prompt": "\n\nHuman: Hi there\n\nAssistant:", "chosen": "Sure, I can.", "id": 7}
    enc = rm.encode([rec["prompt"]], [rec["chosen"]])
    p = enc.prompt_bt[0][enc.prompt_mask_bt[0] == 1].tolist()
    r = enc.response_bl[0][enc.response_mask_bl[0] == 1].tolist()
    assert p == prompt_encoder(tok, 24, bos_id=bos)(rec)["prompt_tokens"].tolist()
    sft = sft_encoder(tok, max_len=64, max_prompt_len=24, bos_id=bos, eos_id=eos)(rec)["tokens"].tolist()
    assert p + r == sft and r[-1] == eos
    long = rm.encode([rec["prompt"]], ["word " * 40])
    r_long = long.response_bl[0][long.response_mask_bl[0] == 1].tolist()
    assert len(r_long) == 12 and eos not in r_long
    # The prompt keeps <bos> + its LAST 23 tokens (left truncation, as the policy's prompts).
    long_p = rm.encode(["\n\nHuman: " + "blah " * 60 + "\n\nAssistant:"], ["x"])
    lp = long_p.prompt_bt[0][long_p.prompt_mask_bt[0] == 1].tolist()
    assert len(lp) == 24 and lp[0] == bos and tok.decode(lp[1:]).endswith("Assistant:")


def _components(setup, repo_root, tmp_path, scorer="in_step", rm="rm"):
    from infalign_jax.cli import load_config_file
    from infalign_jax.ctrl import hh

    cfg = load_config_file(repo_root / "configs" / "ctrl_hh_harmless.py")
    cfg.hh.policy_path = str(setup["policy"])
    cfg.hh.rm_workdir = str(setup["root"] / rm)
    cfg.hh.data_dir = str(setup["root"] / "data")
    cfg.hh.table_dir = str(tmp_path / "unused")
    cfg.hh.num_prompts, cfg.hh.max_prompt_len, cfg.hh.max_new_tokens = 4, 24, 6
    cfg.hh.reward_scorer = scorer
    cfg.prompts_per_step, cfg.num_samples, cfg.num_ref, cfg.progress = 2, 3, 4, False
    cfg.reference = "online"
    return cfg, hh.load_components(cfg)


def test_in_step_scorer_equals_reward_model(setup, repo_root, tmp_path):
    from infalign_jax.ctrl.token_scorer import TokenRewardScorer

    _, c = _components(setup, repo_root, tmp_path)
    assert isinstance(c.scorer, TokenRewardScorer)
    rm = c.scorer.rm
    records = setup["records"][:4]
    prompts = [r["prompt"] for r in records]
    batch = c.prompts.rows(np.arange(4))

    # (1) Texts: replies laid out as policy samples [P=4, S=2, L=16] (right-padded with junk ids under mask 0)
    # score as the reward model scores the texts themselves.
    replies = [[r["chosen"][:40], r["rejected"][:25]] for r in records]
    enc = rm.encode([p for p in prompts for _ in range(2)], [y for ys in replies for y in ys], batch=8)
    tok = np.full((8, 16), 5, np.int32)
    mask = np.zeros((8, 16), bool)
    w = enc.response_bl.shape[1]
    tok[:, :w] = np.where(enc.response_mask_bl == 1, enc.response_bl, 5)
    mask[:, :w] = enc.response_mask_bl == 1
    samples = {"tokens": jnp.asarray(tok.reshape(4, 2, 16)), "mask": jnp.asarray(mask.reshape(4, 2, 16))}
    got = np.asarray(jax.jit(c.scorer)(c.env, batch, samples))
    want = rm.score_texts([p for p in prompts for _ in range(2)], [y for ys in replies for y in ys])
    np.testing.assert_allclose(got, want.reshape(4, 2), atol=1e-5, rtol=0)
    assert np.std(got) > 1e-3

    # (2) Real policy samples: == RM.score of the same tokens row by row at other padding widths. (Not via
    # their decoded texts: a sampled token sequence need not be the tokenizer's own tokenization of its text.)
    rng = jax.random.key_data(jax.random.key(3))
    s = jax.jit(lambda p, b, r: c.policy.sample(p, b, r, 3))(c.params, batch, rng)
    got = np.asarray(jax.jit(c.scorer)(c.env, batch, s))
    toks, masks = np.asarray(s["tokens"]).reshape(12, 6), np.asarray(s["mask"]).reshape(12, 6)
    rows = np.repeat(np.arange(4), 3)
    pad = lambda x: np.pad(x, ((0, 0), (0, 10)))
    direct = rm.score(
        np.pad(batch["rm_prompt_bt"][rows], ((0, 0), (8, 0))),
        np.pad(batch["rm_prompt_mask_bt"][rows], ((0, 0), (8, 0))),
        pad(toks),
        pad(masks.astype(np.int32)),
    )
    np.testing.assert_allclose(got.reshape(-1), np.asarray(direct), atol=1e-5, rtol=0)
    assert np.std(got) > 1e-3


def _step_jaxpr(cfg, c) -> str:
    from infalign_jax.ctrl.train_step import CtrlTrainer
    from infalign_jax.train import _mesh, optimizer, step_config

    step_cfg = step_config(cfg)
    trainer = CtrlTrainer(c.policy, c.scorer, step_cfg, optimizer(cfg, step_cfg), _mesh(cfg))
    state = trainer.init_state(c.params, c.params, c.env, 0)
    batch = trainer.shard_batch(c.prompts.rows(np.arange(2)))
    return str(jax.make_jaxpr(trainer._fused)(state, batch, trainer.step_rng(state)))


def test_step_has_no_host_callback_on_the_in_step_path(setup, repo_root, tmp_path):
    cfg, c = _components(setup, repo_root, tmp_path)
    assert "callback" not in _step_jaxpr(cfg, c)
    # The same step with the host re-tokenization scorer does hold one (the check can fail).
    cfg_cb, c_cb = _components(setup, repo_root, tmp_path, scorer="callback", rm="rm_text")
    assert "pure_callback" in _step_jaxpr(cfg_cb, c_cb)


def test_scorer_refusals(setup, repo_root, tmp_path):
    with pytest.raises(UsageError, match="trained on policy tokens"):
        _components(setup, repo_root, tmp_path, scorer="in_step", rm="rm_text")
    with pytest.raises(UsageError, match="reward_scorer='in_step'"):
        _components(setup, repo_root, tmp_path, scorer="callback", rm="rm")
    with pytest.raises(UsageError, match="reward_scorer must be one of"):
        _components(setup, repo_root, tmp_path, scorer="bogus")
    # A reward model whose tokenizer is not the policy's (here: other special ids) is refused.
    from infalign_jax.ctrl.token_scorer import TokenRewardScorer

    rm = load_reward_model(setup["root"] / "rm")
    with pytest.raises(UsageError, match="differs from the policy's"):
        TokenRewardScorer(rm, rm.tokenizer, rm.policy_tokenizer.bos_id, (rm.policy_tokenizer.eos_id + 1,))
