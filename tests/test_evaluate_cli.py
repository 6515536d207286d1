"""The evaluator CLI end to end on tiny fixtures: samples, judges, caches and reports; resumes a killed run
to the same eval.json; refuses other settings and mismatched models (exit 2, nothing written or changed).

π_ref: the tiny random Llama fixture. Policies: ``same`` (the fixture saved again: equal weights), ``refdir``
(the fixture directory itself) and ``pert`` (the fixture's weights + Gaussian noise). Judge: a decoder reward
model on the fixture with a random linear head (as in test_ctrl_hh). Prompts: the held-out split of the shared
HH data, built into tmp.

Exact expectations: policies with π_ref's weights have KL exactly 0 (log π − log π_ref of equal computations);
all policies share one random stream, so ``same`` and ``refdir`` draw identical samples, and their paired
difference is exactly 0 in every bootstrap resample; the reported win rates are the means of the per-prompt
exact win rates of the cached rewards.
"""

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from reward_fixtures import save_random_head_rm

from infalign_jax.cli import run_main
from infalign_jax.evaluate import command, inference_win_rate

PROCEDURES = "standard,bon:2,won:4,kth:2,3"


@pytest.fixture(scope="module")
def parts(hh_dir, repo_root, tmp_path_factory):
    from infalign_jax.data.hh import build_hh
    from infalign_jax.models import Transformer, from_pretrained, save_pretrained
    from infalign_jax.models.hf_io import model_from_params

    root = tmp_path_factory.mktemp("evaluate")
    build_hh(hh_dir, root / "data")
    ref = repo_root / "tests" / "fixtures" / "models" / "llama"
    model, tok = from_pretrained(ref)
    save_pretrained(model, tok, root / "same")
    rng = np.random.default_rng(0)
    noisy = jax.tree.map(
        lambda a: np.asarray(a) + 0.05 * rng.normal(size=a.shape).astype(a.dtype), model.params()
    )
    save_pretrained(model_from_params(model.config, noisy), tok, root / "pert")
    big = Transformer(model.config.replace(vocab_size=model.config.vocab_size + 8), rngs=nnx.Rngs(0))
    save_pretrained(big, tok, root / "bigvocab")
    shutil.copytree(root / "same", root / "othertok")  # same weights, two token ids swapped
    tok_json = json.loads((root / "othertok" / "tokenizer.json").read_text())
    vocab = tok_json["model"]["vocab"]
    vocab["!"], vocab['"'] = vocab['"'], vocab["!"]
    (root / "othertok" / "tokenizer.json").write_text(json.dumps(tok_json))

    save_random_head_rm(ref, root / "rm")
    (root / "rm" / "eval.json").write_text(
        json.dumps({"pairwise_accuracy": 0.61, "ci95": [0.55, 0.67], "n_eval": 99})
    )
    return {"root": root, "ref": ref, "data": root / "data"}


def args(parts, workdir, *extra, policies=("same", "refdir", "pert")):
    paths = {
        "same": parts["root"] / "same",
        "pert": parts["root"] / "pert",
        "refdir": parts["ref"],
        "big": parts["root"] / "bigvocab",
        "othertok": parts["root"] / "othertok",
    }
    out = []
    for p in policies:
        out += ["--policy", f"{p}={paths[p]}"]
    return out + [
        "--reference", str(parts["ref"]),
        "--judge", f"rm={parts['root'] / 'rm'}",
        "--samples", "4",
        "--procedures", PROCEDURES,
        "--workdir", str(workdir),
        "--prompts", "6",
        "--max-prompt-len", "24",
        "--max-new-tokens", "6",
        "--batch-prompts", "4",
        "--bootstrap", "300",
        "--data-dir", str(parts["data"]),
        "--no-progress",
        *extra,
    ]  # fmt: skip


def exit_code(argv):
    with pytest.raises(SystemExit) as e:
        run_main(command.main, argv)
    return e.value.code


@pytest.fixture(scope="module")
def done(parts):
    workdir = parts["root"] / "w"
    assert exit_code(args(parts, workdir)) == 0
    return workdir


def cached(workdir, side, num_chunks=2):
    chunks = [np.load(workdir / "cache" / side / f"chunk-{c:05d}.npz") for c in range(num_chunks)]
    return {k: np.concatenate([z[k] for z in chunks]) for k in chunks[0].files}


def test_report_contents(parts, done, capsys):
    report = json.loads((done / "eval.json").read_text())
    assert (done / "win_rates.png").stat().st_size > 0
    assert report["prompts"] == 6 and report["samples"] == 4
    assert report["procedures"] == ["standard", "bon:2", "won:4", "kth:2,3"]
    assert [p["name"] for p in report["policies"]] == ["same", "refdir", "pert"]
    judge = report["judges"][0]
    assert (judge["name"], judge["pairwise_accuracy"], judge["ci95"], judge["n_eval"]) == (
        "rm",
        0.61,
        [0.55, 0.67],
        99,
    )

    # The first 6 distinct prompts of the held-out split.
    from infalign_jax.data.hh import load_hh

    src = load_hh("eval", parts["data"])
    assert report["prompt_ids"] == [src[i]["id"] for i in range(6)]

    # KL: exactly 0 for the policies with π_ref's weights; positive-ish and with a standard error otherwise.
    kl = report["kl"]
    assert kl["same"] == {"mean": 0.0, "se": 0.0} and kl["refdir"] == {"mean": 0.0, "se": 0.0}
    assert np.isfinite(kl["pert"]["mean"]) and kl["pert"]["se"] > 0
    same, refdir, pert, ref = (cached(done, s) for s in ("policy-00", "policy-01", "policy-02", "reference"))
    assert same["tokens"].shape == (6, 4, 6) and same["rewards_0"].shape == (6, 4)
    np.testing.assert_array_equal(same["logratio"], 0.0)
    assert kl["pert"]["mean"] == pytest.approx(pert["logratio"].mean(), abs=1e-12)

    # Common random numbers: equal weights -> identical samples and rewards; π_ref's own samples differ.
    np.testing.assert_array_equal(same["tokens"], refdir["tokens"])
    np.testing.assert_array_equal(same["rewards_0"], refdir["rewards_0"])
    assert not np.array_equal(same["tokens"], ref["tokens"])
    assert not np.array_equal(same["tokens"], pert["tokens"])

    # Win rates: the mean of the exact per-prompt win rates of the cached rewards, inside their CI.
    rows = {(w["policy"], w["procedure"]): w for w in report["win_rates"]}
    assert len(rows) == 3 * 4
    for name, side in (("same", same), ("pert", pert)):
        for proc in report["procedures"]:
            per_prompt = inference_win_rate(side["rewards_0"], ref["rewards_0"], proc)
            np.testing.assert_array_equal(report["per_prompt_win_rates"][name]["rm"][proc], per_prompt)
            w = rows[(name, proc)]
            assert w["win_rate"] == pytest.approx(per_prompt.mean(), abs=1e-15)
            assert w["ci95"][0] <= w["win_rate"] <= w["ci95"][1]
    diffs = {(d["policy"], d["baseline"], d["procedure"]): d for d in report["paired_differences"]}
    assert len(diffs) == 3 * 4  # 3 pairs x 4 procedures
    for proc in report["procedures"]:
        assert diffs[("same", "refdir", proc)]["diff"] == 0.0
        assert diffs[("same", "refdir", proc)]["ci95"] == [0.0, 0.0]
        d = diffs[("same", "pert", proc)]
        assert d["diff"] == pytest.approx(
            rows[("same", proc)]["win_rate"] - rows[("pert", proc)]["win_rate"], abs=1e-12
        )

    # A rerun of the finished evaluation recomputes nothing and prints the table.
    before = json.loads((done / "eval.json").read_text())
    assert exit_code(args(parts, done)) == 0
    out = capsys.readouterr().out
    assert "held-out pairwise accuracy 0.6100" in out and "won:4" in out and "same − pert" in out
    after = json.loads((done / "eval.json").read_text())
    before.pop("seconds"), after.pop("seconds")
    assert after == before


def test_killed_run_resumes_to_the_same_report(parts, done, monkeypatch):
    workdir = parts["root"] / "killed"
    cfg, _ = command.parse_args(args(parts, workdir))
    real, calls = command._compute_chunk, []

    def killed(*a):
        calls.append(1)
        if len(calls) == 4:  # reference: 2 chunks, policy same: 1 of 2
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(command, "_compute_chunk", killed)
    with pytest.raises(KeyboardInterrupt):
        command.run_evaluation(cfg, progress=False)
    assert len(list((workdir / "cache").rglob("*.npz"))) == 3 and not (workdir / "eval.json").exists()
    monkeypatch.setattr(command, "_compute_chunk", real)
    resumed = command.run_evaluation(cfg, progress=False)
    assert len(list((workdir / "cache").rglob("*.npz"))) == 2 * 4
    full = json.loads((done / "eval.json").read_text())
    for key in (
        "win_rates",
        "paired_differences",
        "kl",
        "per_prompt_win_rates",
        "reward_means",
        "prompt_ids",
    ):
        assert json.loads(json.dumps(resumed[key])) == full[key], key


def test_refusals(parts, done, tmp_path, capsys):
    snapshot = {p: p.read_bytes() for p in done.rglob("*") if p.is_file()}
    # Other settings in a finished workdir: exit 2, one error line naming the difference, nothing touched.
    for extra, needle in ((["--seed", "1"], "seed"), (["--samples", "5"], "samples")):
        assert exit_code(args(parts, done, *extra)) == 2  # appended: the last --seed / --samples wins
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1
    assert exit_code(args(parts, done, policies=("same", "pert"))) == 2
    assert "policies" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in done.rglob("*") if p.is_file()} == snapshot

    # Bad input before anything is written: a mismatched vocabulary, a bad procedure, N > M, a missing model.
    cases = [
        (args(parts, tmp_path / "a", policies=("same", "big")), "vocab size"),
        (args(parts, tmp_path / "a2", policies=("othertok",)), "another tokenizer than the reference"),
        (args(parts, tmp_path / "b", "--procedures", "standard,bon:8"), "N <= M"),
        (args(parts, tmp_path / "c", "--procedures", "rejection:0.5,2"), "not a selection"),
        (args(parts, tmp_path / "d", "--procedures", "bon:x"), "not an integer"),
        (args(parts, tmp_path / "e") + ["--judge", f"j2={tmp_path}"], "no reward model"),
        (args(parts, tmp_path / "f") + ["--policy", f"nope={tmp_path / 'missing'}"], "no model"),
        (args(parts, tmp_path / "g") + ["--policy", f"same={parts['ref']}"], "given twice"),
    ]
    for argv, needle in cases:
        assert exit_code(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
