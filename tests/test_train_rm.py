"""End-to-end train_rm CLI on a tiny subset (eval.json, checkpoint reload, seeded rerun) and bad configs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from infalign_jax.reward.bradley_terry import pairwise_correct

CONFIG = "configs/rm_hh_harmless.py"


def _run(repo_root, *args):
    return subprocess.run(
        [sys.executable, "-m", "infalign_jax.train_rm", *args],
        cwd=repo_root,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, hh_dir):
    from infalign_jax.data.hh import build_hh

    out = tmp_path_factory.mktemp("hh")
    build_hh(hh_dir, out)
    return out


def test_train_rm_tiny_end_to_end(repo_root, data_dir, tmp_path, capsys):
    from infalign_jax.data.hh import load_hh
    from infalign_jax.reward import load_reward_model

    workdir = tmp_path / "rm"
    args = [
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.data.max_train_pairs=48",
        "--config.data.max_eval_pairs=16",
        "--config.train.head_steps=30",
        "--config.train.head_batch_size=16",
        "--config.train.encode_batch_size=32",
        "--config.train.head_l2=(0.1, 10.0)",
        "--config.eval.n_boot=500",
    ]
    proc = _run(repo_root, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((workdir / "eval.json").read_text())
    assert report["n_eval"] == 16 and report["n_train"] == 48
    acc, (lo, hi) = report["pairwise_accuracy"], report["ci95"]
    assert 0.0 <= lo <= acc <= hi <= 1.0
    # The summary on stdout: the held-out accuracy with its CI, and where the outputs are.
    printed = proc.stdout.splitlines()
    assert printed[0] == "reward model: Bradley–Terry head trained on 48 HH-RLHF pairs"
    row = f"{acc:.4f} (95% CI [{lo:.4f}, {hi:.4f}], n = 16)"
    assert printed[1].split(None, 3)[:3] == ["held-out", "pairwise", "accuracy"]
    assert printed[1].split(None, 3)[3].strip() == row
    assert printed[-1].startswith(f"  outputs: {workdir} (checkpoint/, eval.json, feature_cache/")
    assert report["head_l2"] in (0.1, 10.0) and set(report["cv_heldout_bt_loss"]) == {"0.1", "10.0"}
    assert {"features_s", "head_train_s", "total_s"} <= set(report["timings"])
    assert (workdir / "metrics.jsonl").read_text().strip() and any((workdir / "tb").iterdir())

    # The saved model reproduces the reported accuracy through the text-level scoring API.
    rm = load_reward_model(workdir)
    ev = load_hh("eval", data_dir)
    recs = [ev[i] for i in range(16)]
    prompts = [r["prompt"] for r in recs]
    rc = rm.score_texts(prompts, [r["chosen"] for r in recs])
    rr = rm.score_texts(prompts, [r["rejected"] for r in recs])
    assert pairwise_correct(rc, rr).mean() == pytest.approx(acc)

    # Same seed, same workdir, the finished run's eval.json gone (an interrupted rerun): the cached features
    # are reused and every number repeats exactly.
    cache = sorted(p.name for p in (workdir / "feature_cache").iterdir())
    assert len(cache) == 2
    metrics = (workdir / "metrics.jsonl").read_text()
    (workdir / "eval.json").unlink()
    proc = _run(repo_root, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((workdir / "eval.json").read_text())
    assert sorted(p.name for p in (workdir / "feature_cache").iterdir()) == cache
    for key in ("pairwise_accuracy", "ci95", "train_pairwise_accuracy", "head_l2", "cv_heldout_bt_loss"):
        assert again[key] == report[key], key
    # ... and the rerun logs afresh: it used to append a second copy of every step to metrics.jsonl.
    assert (workdir / "metrics.jsonl").read_text() == metrics
    assert np.isfinite(again["train_pairwise_accuracy"])

    # A rerun of the finished run with the same config trains nothing: "already complete:", exit 0.
    from infalign_jax.train_rm import main

    files = lambda: {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in workdir.rglob("*") if p.is_file()}
    before = files()
    assert main([f"--config={repo_root / CONFIG}", *args[1:]]) == 0
    printed_again = capsys.readouterr().out.splitlines()
    assert printed_again[0] == f"already complete: {printed[0]}; outputs in {printed[-1].split(': ', 1)[1]}"
    assert printed_again[1:3] == printed[1:3] and files() == before


@pytest.mark.parametrize(
    "args, needle",
    [
        ([f"--config={CONFIG}", "--config.model.backbone=bert"], "backbone"),
        ([f"--config={CONFIG}", "--config.train.head_steps=-1"], "head_steps"),
        # head_steps 0 was: np.stack
        ([f"--config={CONFIG}", "--config.train.head_steps=0"], "head_steps must be an integer >= 1"),
        ([f"--config={CONFIG}", "--config.train.head_learning_rate=inf"], "head_learning_rate must be"),
        # a bad seed used to fail only after the whole data set was encoded
        ([f"--config={CONFIG}", "--config.seed=-1"], "seed must be an integer in"),
        ([f"--config={CONFIG}", "--config.model.no_such_key=1"], "no_such_key"),
        (["--config=configs/does_not_exist.py"], "does_not_exist"),
        ([], "--config"),
    ],
)
def test_bad_config_exits_2(repo_root, tmp_path, args, needle):
    proc = _run(repo_root, *args, f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("error:") and needle in err[-1]
    assert not (tmp_path / "w").exists()  # nothing written


def test_workdir_of_another_command_or_a_file_is_refused_untouched(repo_root, tmp_path):
    """train_rm used to write its eval.json / metrics into any workdir (e.g. an SFT run's), and a workdir that
    is a file failed with a traceback after encoding every pair."""
    sft_like = tmp_path / "sft"
    (sft_like / "export").mkdir(parents=True)
    (sft_like / "eval.json").write_text('{"sft_eval_loss": 1.0}')
    afile = tmp_path / "afile"
    afile.write_text("keep")
    cases = ((sft_like, "holds files train_rm does not write (export)"), (afile, "not a directory"))
    for workdir, needle in cases:
        proc = _run(repo_root, f"--config={CONFIG}", f"--workdir={workdir}")
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith("error:") and needle in proc.stderr
    assert sorted(p.name for p in sft_like.iterdir()) == ["eval.json", "export"]
    assert (sft_like / "eval.json").read_text() == '{"sft_eval_loss": 1.0}' and afile.read_text() == "keep"
