"""CTRL with the real LM components at toy scale: the LM policy adapter (logprobs == sampler logprobs), the
calibrate CLI (table contents, resume == uninterrupted, NaN rewards -> exit 2 with nothing stored, stale
tables refused) and 2 train steps end to end on HH prompts (finite metrics, step-time breakdown, params move).

Policy: the tiny random Llama fixture (its byte-level BPE tokenizer); reward model: a decoder reward net on
the same fixture with a random linear head (saved/loaded through the reward package); HH: the packaged
harmless-base data built into tmp.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reward_fixtures import save_random_head_rm

from infalign_jax.cli import UsageError, load_config_file, run_main
from infalign_jax.ctrl import hh
from infalign_jax.ctrl.table import load_table

SMALL = {
    "hh.reward_scorer": "callback",  # the fixture RM reads text (policy tokens: test_reward_policy_tokens.py)
    "num_steps": 2,
    "prompts_per_step": 2,
    "num_samples": 2,
    "num_ref": 4,
    "progress": False,
    "checkpoint_every": 1,
    "optim.lr": 1e-2,
    "hh.num_prompts": 6,
    "hh.max_prompt_len": 24,
    "hh.max_new_tokens": 6,
    "hh.calibration_batch_prompts": 4,
    "hh.eval_samples": 2,
}


@pytest.fixture(scope="module")
def parts(hh_dir, repo_root, tmp_path_factory):
    """HH dataset, the fixture policy and a random-head decoder reward model, built once in tmp."""
    from infalign_jax.data.hh import build_hh

    root = tmp_path_factory.mktemp("ctrl_hh")
    build_hh(hh_dir, root / "data")
    policy = repo_root / "tests" / "fixtures" / "models" / "llama"
    save_random_head_rm(policy, root / "rm")
    return {"root": root, "policy": policy, "rm": root / "rm", "data": root / "data"}


@pytest.fixture(scope="module")
def components(parts, repo_root, tmp_path_factory):
    """The loaded components of the small config (shared: one compilation of the sample-and-score step)."""
    return hh.load_components(make_config(repo_root, overrides(parts, tmp_path_factory.mktemp("unused"))))


@pytest.fixture(scope="module")
def table_dir(parts, repo_root, tmp_path_factory):
    """A table built by the calibrate CLI (6 prompts, K=4, chunks of 4)."""
    from infalign_jax.calibrate import main

    path = tmp_path_factory.mktemp("table") / "t"
    assert _exit_code(main, cli_args(repo_root, overrides(parts, path))) == 0
    return path


def overrides(parts, table_dir, **extra):
    return {
        **SMALL,
        "hh.policy_path": str(parts["policy"]),
        "hh.rm_workdir": str(parts["rm"]),
        "hh.data_dir": str(parts["data"]),
        "hh.table_dir": str(table_dir),
        **extra,
    }


def make_config(repo_root, values):
    cfg = load_config_file(repo_root / "configs" / "ctrl_hh_harmless.py")
    for key, value in values.items():
        node = cfg
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return cfg


def cli_args(repo_root, values):
    return [f"--config={repo_root / 'configs' / 'ctrl_hh_harmless.py'}"] + [
        f"--config.{k}={v}" for k, v in values.items()
    ]


def test_lm_policy_logprobs_match_sampler_and_scores_match_rm(parts, components, tmp_path):
    c = components
    batch = c.prompts.rows(np.arange(3))
    assert batch["prompt_bt"].shape == (3, 24) and batch["rm_prompt_bt"].shape == (3, 16)
    rng = jax.random.key_data(jax.random.key(0))
    samples = jax.jit(lambda p, b, r: c.policy.sample(p, b, r, 5))(c.params, batch, rng)
    assert samples["tokens"].shape == (3, 5, 6)
    lp, mask = jax.jit(c.policy.logprobs)(c.params, batch, samples)
    # The sampler's own per-token log-probabilities (KV-cache decode) vs the full-sequence recomputation.
    from infalign_jax.models.transformer import decoder
    from infalign_jax.reward.adapter import decode_rows
    from infalign_jax.sampling import generate
    from infalign_jax.seeds import as_typed_key

    key = as_typed_key(rng)
    run = lambda params, prompt, mask: generate(
        decoder(c.policy.config, params),
        prompt,
        mask,
        jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(3)),
        n=5,
        max_new_tokens=6,
        eos_ids=c.policy.eos_ids,
    )
    out = jax.jit(run)(c.params, batch["prompt_bt"], batch["prompt_mask_bt"])
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(samples["tokens"]))
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(out.mask))
    np.testing.assert_allclose(np.asarray(lp), np.asarray(out.logprobs), atol=2e-5)
    assert np.all(np.asarray(lp)[np.asarray(mask)] < 0) and np.all(np.asarray(lp)[~np.asarray(mask)] == 0)

    # Scores: the scorer (host re-tokenization + in-graph reward net) == the reward model on the texts.
    r_ps = np.asarray(jax.jit(c.scorer)(c.env, batch, samples))
    texts = decode_rows(
        c.tokenizer, np.asarray(samples["tokens"]).reshape(15, 6), np.asarray(mask).reshape(15, 6)
    )
    from infalign_jax.data.hh import load_hh

    src = load_hh("train", parts["data"])
    prompts = [src[i]["prompt"] for i in range(3) for _ in range(5)]
    want = c.scorer.rm.score_texts(prompts, texts).reshape(3, 5)
    np.testing.assert_allclose(r_ps, want, rtol=1e-4, atol=1e-4)
    assert np.std(r_ps) > 0


def test_calibrate_cli_table_resume_and_refusals(
    parts, components, table_dir, repo_root, tmp_path, monkeypatch, capsys
):
    import infalign_jax.calibrate as calibrate

    table = load_table(table_dir)
    assert table.k == 4 and table.meta["batch_prompts"] == 4
    np.testing.assert_array_equal(table.prompt_ids, np.sort(components.prompts.ids))
    assert np.all(np.diff(table.rewards_nk, axis=1) >= 0) and np.isfinite(table.rewards_nk).all()
    assert np.std(table.rewards_nk) > 0

    # Killed after the first chunk (4 of 6 prompts) was flushed, then rerun: same table as uninterrupted.
    cfg = make_config(repo_root, overrides(parts, tmp_path / "part"))
    real = calibrate.chunked_rewards

    def interrupted(*args):
        for i, item in enumerate(real(*args)):
            if i == 1:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(calibrate, "chunked_rewards", interrupted)
    with pytest.raises(KeyboardInterrupt):
        calibrate.build_table(cfg, progress=False, parts=components)
    assert load_table(tmp_path / "part").prompt_ids.size == 4
    monkeypatch.setattr(calibrate, "chunked_rewards", real)
    assert calibrate.build_table(cfg, progress=False, parts=components)["new_prompts"] == 2
    assert calibrate.build_table(cfg, progress=False, parts=components)["new_prompts"] == 0
    resumed = load_table(tmp_path / "part")
    np.testing.assert_array_equal(resumed.prompt_ids, table.prompt_ids)
    np.testing.assert_array_equal(resumed.rewards_nk, table.rewards_nk)

    # The complete table, rerun through the CLI: one "already complete:" line, exit 0, nothing written.
    values = overrides(parts, table_dir)
    files = lambda: {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in table_dir.rglob("*") if p.is_file()}
    before = files()
    capsys.readouterr()
    assert _exit_code(calibrate.main, cli_args(repo_root, values)) == 0
    printed = capsys.readouterr().out.splitlines()
    title = "calibration table: 6 prompts x K = 4 reference rewards"
    assert printed[0] == f"already complete: {title}; outputs in {table_dir}"
    assert printed[1].split() == ["prompts", "added", "this", "run", "0"] and files() == before

    # Settings that change the rewards are refused on a table built for others (exit 2).
    assert _exit_code(calibrate.main, cli_args(repo_root, {**values, "seed": 1})) == 2
    assert _exit_code(calibrate.main, cli_args(repo_root, {**values, "num_ref": 8})) == 2
    cfg = make_config(repo_root, {**values, "hh.max_new_tokens": 5})
    with pytest.raises(UsageError, match="max_new_tokens"):
        hh.open_table(cfg, components.prompts.ids)

    # A config error caught while loading (here the split) leaves no table behind to refuse the fixed rerun.
    bad = tmp_path / "bad_split"
    assert _exit_code(calibrate.main, cli_args(repo_root, {**overrides(parts, bad), "hh.split": "test"})) == 2
    assert not (bad / "meta.json").exists()

    # Final evaluation of π_ref itself against the table: u in [0, 1], reference mean read from the table.
    ev = hh.evaluate(components, table, components.params, num_samples=4, seed=0, chunk=4)["eval"]
    assert 0.0 < ev["u_mean"] < 1.0 and ev["prompts"] == 6
    assert ev["ref_reward_mean"] == pytest.approx(float(table.rewards_nk.mean()), rel=1e-6)


def test_calibrate_nan_rewards_error_and_store_nothing(parts, components, repo_root, tmp_path):
    from infalign_jax.calibrate import build_table

    env = jax.tree.map(np.copy, components.env)
    env["head"]["out"]["kernel"][...] = np.nan
    nan_parts = dataclasses.replace(components, env=env)
    cfg = make_config(repo_root, overrides(parts, tmp_path / "t"))
    with pytest.raises(UsageError, match="non-finite reference reward"):
        build_table(cfg, progress=False, parts=nan_parts)
    assert load_table(tmp_path / "t").prompt_ids.size == 0


def test_missing_artifacts_name_the_command(parts, repo_root, tmp_path):
    cfg = make_config(repo_root, overrides(parts, tmp_path / "t", **{"hh.policy_path": str(tmp_path / "no")}))
    with pytest.raises(UsageError, match="infalign_jax.sft"):
        hh.load_components(cfg)
    cfg = make_config(repo_root, overrides(parts, tmp_path / "t", **{"hh.rm_workdir": str(tmp_path / "no")}))
    with pytest.raises(UsageError, match="infalign_jax.train_rm"):
        hh.load_components(cfg)
    cfg = make_config(repo_root, overrides(parts, tmp_path / "absent"))
    with pytest.raises(UsageError, match="infalign_jax.calibrate"):
        hh.open_table(cfg, [0, 1])


def test_two_ctrl_steps_end_to_end(parts, table_dir, repo_root, tmp_path):
    from infalign_jax import train
    from infalign_jax.harness.checkpoint import Checkpointer
    from infalign_jax.models import from_pretrained

    wd = tmp_path / "run"  # through the trainer's task registry: config.problem = "hh"
    train.train(make_config(repo_root, overrides(parts, table_dir, **{"hh.eval_samples": 0})), wd)
    rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        for k in ("time/sampling", "time/scoring", "time/calibration", "time/update", "time/step"):
            assert r[k] > 0, k
        assert all(np.isfinite(v) for v in r.values() if isinstance(v, float)), r
        assert 0.0 <= r["u/mean"] <= 1.0 and r["finite"] == 1.0 and r["grad_norm"] > 0

    trained = Checkpointer(wd, 0).restore_raw(2)["params"]
    model, sft_tok = from_pretrained(parts["policy"])
    initial = jax.tree.map(np.asarray, model.params())
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), trained, initial)
    assert max(jax.tree.leaves(moved)) > 1e-4
    # The trained policy is exported for users (there was no documented way to take it away).
    exported, tok = from_pretrained(wd / "export")
    assert exported.config == model.config and tok.get_vocab() == sft_tok.get_vocab()
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, exported.params()), trained)
    # A rerun of the finished run redoes a lost export (it returned early before), and keeps the rest.
    import shutil

    shutil.rmtree(wd / "export")
    metrics = (wd / "metrics.jsonl").read_bytes()
    train.train(make_config(repo_root, overrides(parts, table_dir, **{"hh.eval_samples": 0})), wd)
    again, _ = from_pretrained(wd / "export")
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, again.params()), trained)
    assert (wd / "metrics.jsonl").read_bytes() == metrics


def _exit_code(main, args) -> int:
    with pytest.raises(SystemExit) as e:
        run_main(main, args)
    return e.value.code or 0


def test_sample_and_score_on_a_data_mesh_equals_one_device(components):
    """The batch sharded over 2 devices ('data' axis, as the trainer shards it): the same K samples and
    rewards as unsharded (the host re-tokenization callback sees the gathered batch)."""
    from infalign_jax.ctrl.sharding import batch_sharding
    from infalign_jax.mesh import make_mesh

    c = components
    batch = c.prompts.rows(np.arange(4))
    rng = jax.random.key_data(jax.random.key(3))
    want = np.asarray(c.rewards_fn(c.params, c.env, batch, rng, k=4))
    mesh = make_mesh(2, 1, jax.devices()[:2])
    sharded = jax.device_put(batch, batch_sharding(batch, mesh))
    got = c.rewards_fn(c.params, c.env, sharded, rng, k=4)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    assert np.std(want) > 0


def test_scorer_sees_replies_stripped_like_reward_model_training_replies(components):
    """The policy's first response token carries the space of 'prompt + " " + reply'; the reward model was
    trained on stripped replies, so the scorer must encode 'I can help you', not ' I can help you'
    (RewardModel.encode strips, for this scorer and every other caller)."""
    tok, scorer = components.tokenizer, components.scorer
    ids = tok.encode(" I can help you ", add_special_tokens=False)
    assert tok.decode(ids).startswith(" ")
    mask = np.array([[[True] * len(ids)]])
    got_ids, got_mask = scorer._encode_responses_host(np.array([[ids]], np.int32), mask)
    enc = scorer.rm.encode([""], ["I can help you"], batch=1)
    n = int(enc.response_mask_bl.sum())
    assert int(got_mask.sum()) == n
    np.testing.assert_array_equal(np.asarray(got_ids)[0, 0, :n], enc.response_bl[0, :n])


def test_table_meta_tracks_the_weights_not_just_the_paths(parts, repo_root, tmp_path):
    """An SFT export or reward model rewritten in place (same path, new weights) changes the table's recorded
    metadata, so open_table / calibrate refuse a table built for the old weights; the same weights saved
    again do not."""
    import shutil

    policy = tmp_path / "policy"
    shutil.copytree(parts["policy"], policy)
    cfg = make_config(repo_root, {**overrides(parts, tmp_path / "t"), "hh.policy_path": str(policy)})
    before = hh.table_meta(cfg)
    assert hh.table_meta(cfg) == before  # deterministic
    weights = policy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    after = hh.table_meta(cfg)
    assert after["policy_weights_sha256"] != before["policy_weights_sha256"]
    assert {k: v for k, v in after.items() if k != "policy_weights_sha256"} == {
        k: v for k, v in before.items() if k != "policy_weights_sha256"
    }

    # The reward model: the same weights saved again (a deterministic rerun of train_rm writes other Orbax
    # files: timestamps, random names) keep the table valid; one changed weight does not.
    from infalign_jax.reward import load_reward_model, save_reward_model, weights_digest

    rm_dir = tmp_path / "rm"
    shutil.copytree(parts["rm"], rm_dir)
    rm = load_reward_model(rm_dir)
    files = {p.relative_to(rm_dir): p.read_bytes() for p in (rm_dir / "checkpoint").rglob("*") if p.is_file()}
    save_reward_model(rm, rm_dir)
    again = {p.relative_to(rm_dir): p.read_bytes() for p in (rm_dir / "checkpoint").rglob("*") if p.is_file()}
    assert again != files  # what the old file hash saw
    assert weights_digest(rm_dir) == weights_digest(parts["rm"])
    net = rm.net
    net.head.out.bias[...] = net.head.out.bias[...] + 1e-3
    rm.set_net(net)
    save_reward_model(rm, rm_dir)
    assert weights_digest(rm_dir) != weights_digest(parts["rm"])
