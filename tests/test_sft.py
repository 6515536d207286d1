"""SFT end to end on the real HH data with a tiny model: loss goes down, export reloads with identical logits,
same seed -> same parameters, a resumed run equals an uninterrupted one (metrics included), finished runs are
not overwritten; bad inputs are one UsageError before anything is written, --overwrite starts from scratch."""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_signals import rows, signal_when
from safetensors.numpy import load_file
from two_processes import run_workers

from infalign_jax.cli import UsageError, run_main
from infalign_jax.cli import load_config_file as load_config
from infalign_jax.data.hh import build_hh
from infalign_jax.data.tokenizer import load_tokenizer, train_hh_tokenizer
from infalign_jax.models import from_pretrained
from infalign_jax.sft import load_checkpoint, main, masked_lm_loss, train


@pytest.fixture(scope="module")
def prepared(hh_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    build_hh(hh_dir, root / "data")
    train_hh_tokenizer(root / "data", root / "tok", vocab_size=320)
    return root


TINY_MODEL = dict(
    hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16
)
TINY = dict(max_len=32, max_prompt_len=16, buckets=(32,), batch_size=8, num_steps=6, learning_rate=1e-2)
TINY.update(warmup_steps=0, end_lr_fraction=1.0, log_every=1, eval_every=100, checkpoint_every=3)
TINY.update(num_samples=0, seed=3)


def tiny(prepared, **kw):
    c = load_config("configs/sft_hh_tiny.py")
    c.data_dir = str(prepared / "data")
    c.tokenizer_path = str(prepared / "tok")
    c.model.update(**TINY_MODEL)
    c.update(**TINY)
    c.update(**kw)
    return c


def cli_args(prepared, **kw) -> list[str]:
    """The command-line form of :func:`tiny` (``python -m infalign_jax.sft`` arguments, no --workdir)."""
    values = {"data_dir": prepared / "data", "tokenizer_path": prepared / "tok"}
    values.update({f"model.{k}": v for k, v in TINY_MODEL.items()})
    values.update({**TINY, **kw})
    return ["--config", "configs/sft_hh_tiny.py", *(f"--config.{k}={v}" for k, v in values.items())]


def snapshot(root) -> dict:
    """``{relative path: (size, mtime, sha256)}`` of all under ``root``: equal snapshots = untouched."""
    return {
        str(p.relative_to(root)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None,
        )
        for p in sorted(root.rglob("*"))
    }


def metrics_rows(workdir) -> list[dict]:
    return [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_masked_lm_loss_matches_hand_computation():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    tokens = jnp.array([[0, 1, 2]])
    nll, n = masked_lm_loss(logits, tokens, jnp.array([[0, 1, 1]]))
    assert n == 2 and nll == pytest.approx(-np.log(0.25) - np.log(0.1), rel=1e-6)
    nll, n = masked_lm_loss(logits, tokens, jnp.array([[1, 0, 1]]))  # the first token is never a target
    assert n == 1 and nll == pytest.approx(-np.log(0.1), rel=1e-6)


def test_sft_trains_exports_reloads_and_refuses_overwrite(prepared, tmp_path, capsys):
    wd = tmp_path / "run"
    args = [*cli_args(prepared, num_samples=2, sample_max_new_tokens=6), "--workdir", str(wd)]
    assert main(args) == 0  # the CLI: the run of tiny(prepared, num_samples=2, ...), then its summary
    printed = capsys.readouterr().out.splitlines()
    losses = [
        json.loads(ln)["train_loss"]
        for ln in (wd / "metrics.jsonl").read_text().splitlines()
        if "train_loss" in ln
    ]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5  # ln(320) = 5.77 at init
    saved = json.loads((wd / "eval.json").read_text())
    assert saved["eval_perplexity"] == pytest.approx(np.exp(saved["eval_loss"]))
    assert saved["eval_loss"] < np.log(320) and saved["steps"] == 6 and saved["eval_examples"] > 200
    assert len(saved["samples"]) == 2 and all(isinstance(s["greedy"], str) for s in saved["samples"])
    assert list((wd / "tb").iterdir())  # TensorBoard events

    model, tok = from_pretrained(wd / "export")
    assert len(tok) == 320 and tok.eos_token_id == 2
    ids = tok("\n\nHuman: how do I pick a lock?\n\nAssistant:")["input_ids"]
    tokens = jnp.asarray([ids], jnp.int32)
    # Reference: the trained parameters exactly as the trainer left them (its last Orbax checkpoint).
    ref, meta = load_checkpoint(wd, tiny(prepared))
    assert meta["step"] == 6 and meta["loader"] == {"epoch": 0, "index": 6}
    np.testing.assert_array_equal(np.asarray(model(tokens)), np.asarray(ref(tokens)))

    with pytest.raises(UsageError, match="finished export"):
        train(tiny(prepared), str(wd))
    with pytest.raises(SystemExit) as e:
        run_main(main, ["--config", "configs/sft_hh_tiny.py", "--workdir", str(wd)])
    assert e.value.code == 2

    # The CLI's summary: eval.json's held-out loss and perplexity, and where the outputs are.
    n, examples = saved["num_params"], saved["train_examples"]
    assert printed[0] == f"SFT: 6 steps, {n:,} parameters, {examples} train dialogues"
    loss, ppl = f"{saved['eval_loss']:.4f}", f"{saved['eval_perplexity']:.2f},"
    held_out = ["held-out", "loss", loss, "(perplexity", ppl, str(saved["eval_examples"]), "dialogues)"]
    assert printed[1].split() == held_out
    assert printed[-1].startswith(f"  outputs: {wd} (export/, checkpoints/, run_config.json, eval.json")
    # Rerun with the same settings: one "already complete:" line, exit 0, nothing touched.
    capsys.readouterr()
    before = snapshot(wd)
    assert main(args) == 0
    again = capsys.readouterr().out.splitlines()
    assert again[0].startswith(f"already complete: {printed[0]}; outputs in {wd} (export/")
    assert again[1:] == printed[1:-1] and snapshot(wd) == before


def test_same_seed_same_params_and_resume_equals_uninterrupted(prepared, tmp_path):
    train(tiny(prepared), str(tmp_path / "a"))
    # Interrupted run: 3 steps (checkpoint at 3), drop the export, then continue to 6 from the checkpoint.
    train(tiny(prepared, num_steps=3), str(tmp_path / "b"))
    shutil.rmtree(tmp_path / "b" / "export")
    res = train(tiny(prepared), str(tmp_path / "b"))
    assert res["steps"] == 6
    a = load_file(tmp_path / "a" / "export" / "model.safetensors")
    b = load_file(tmp_path / "b" / "export" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert jax.device_count() == 8  # the batch really was sharded over the 8 test devices

    # Interrupted after logging steps 4-6 but before their checkpoint: the resumed run logs them again, and
    # metrics.jsonl ends up with exactly the rows of the uninterrupted run (one per step and kind).
    c = tmp_path / "c"
    train(tiny(prepared), str(c))
    for p in (c / "checkpoints" / "6", c / "export"):
        shutil.rmtree(p)
    train(tiny(prepared), str(c))
    assert metrics_rows(c) == metrics_rows(tmp_path / "a")
    assert [r["step"] for r in metrics_rows(c) if "train_loss" in r] == [1, 2, 3, 4, 5, 6]


def test_metrics_resume_with_checkpoints_between_log_rows_and_num_steps_under_decay(prepared, tmp_path):
    """checkpoint_every 2, log_every 4: a run resumed from checkpoint 2 logged the step-4 train loss as the
    mean of steps 3-4 (the losses since the last row were not checkpointed), not of 1-4 (review of
    2026-11-27); every checkpoint now also writes a row. And with a decaying learning rate (end_lr_fraction
    < 1) a changed num_steps is refused: the cosine is spread over it."""
    cfg = dict(log_every=4, checkpoint_every=2, keep_checkpoints=5)
    train(tiny(prepared, **cfg), str(tmp_path / "a"))
    b = tmp_path / "b"
    train(tiny(prepared, **cfg), str(b))
    for p in (b / "checkpoints" / "4", b / "checkpoints" / "6", b / "export"):
        shutil.rmtree(p)  # as if killed right after checkpoint 2
    train(tiny(prepared, **cfg), str(b))
    assert metrics_rows(b) == metrics_rows(tmp_path / "a")
    assert [r["step"] for r in metrics_rows(b) if "train_loss" in r] == [2, 4, 6]

    wd = tmp_path / "decay"
    train(tiny(prepared, num_steps=2, checkpoint_every=1, end_lr_fraction=0.1), str(wd))
    shutil.rmtree(wd / "export")  # unfinished: a rerun resumes it
    before = snapshot(wd)
    decaying = r"num_steps 2, with the learning rate decaying over it \(end_lr_fraction 0.1\), so resuming it"
    with pytest.raises(UsageError, match=rf"{decaying} with num_steps 4"):
        train(tiny(prepared, num_steps=4, checkpoint_every=1, end_lr_fraction=0.1), str(wd))
    assert snapshot(wd) == before


def test_sigterm_saves_a_checkpoint_and_exits_143(prepared, tmp_path, repo_root):
    """SFT had no SIGTERM handler: a preempted VM lost every step since the last checkpoint."""
    wd = tmp_path / "term"
    big = dict(num_steps=100000, eval_every=100000, checkpoint_every=100000)
    cmd = [sys.executable, "-m", "infalign_jax.sft", *cli_args(prepared, **big), "--workdir", str(wd)]
    code, err = signal_when(cmd, lambda: rows(wd / "metrics.jsonl") >= 3, cwd=repo_root)
    assert code == 143, err[-3000:]
    last = metrics_rows(wd)[-1]["step"]
    assert f"SIGTERM: saved checkpoint at step {last}; exiting" in err
    assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == [last]


def test_damaged_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(prepared, tmp_path, capsys):
    """SFT's checkpoints are the harness's (digests recorded at save time): a flipped byte in the newest one
    is found, that checkpoint is moved to checkpoints.damaged/ with one warning line, and the run resumes from
    the one before — giving the parameters and metrics of the uninterrupted run."""
    wd = tmp_path / "run"
    train(tiny(prepared), str(wd))  # checkpoints 3 and 6
    assert (wd / "checkpoints" / "6" / "digests.json").is_file()
    rows, params = metrics_rows(wd), load_file(wd / "export" / "model.safetensors")
    shutil.rmtree(wd / "export")
    (wd / "eval.json").unlink()
    target = sorted((wd / "checkpoints" / "6" / "train").glob("ocdbt.process_0/d/*"))[0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    capsys.readouterr()
    assert train(tiny(prepared), str(wd))["steps"] == 6
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    rel = target.relative_to(wd / "checkpoints" / "6").as_posix()
    assert warnings == [
        f"warning: checkpoint 6 is damaged ({rel} differs from the file saved (SHA-256 mismatch)); resuming "
        f"from step 3 (damaged checkpoints moved to {(wd / 'checkpoints.damaged').absolute()})"
    ]
    assert (wd / "checkpoints.damaged" / "6").is_dir()  # kept for inspection; step 6 is saved anew
    assert (wd / "checkpoints" / "6" / "digests.json").is_file()
    assert metrics_rows(wd) == rows
    again = load_file(wd / "export" / "model.safetensors")
    assert again.keys() == params.keys()
    for k in params:
        np.testing.assert_array_equal(again[k], params[k], err_msg=k)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"buckets": ()}, "buckets must be a non-empty"),
        ({"log_every": 0}, "log_every must be an integer >= 1, got 0"),
        ({"eval_every": 0}, "eval_every must be an integer >= 1"),
        ({"checkpoint_every": 0}, "checkpoint_every must be an integer >= 1"),
        ({"keep_checkpoints": -1}, "keep_checkpoints must be an integer >= 1, got -1"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"max_prompt_len": 32}, "max_prompt_len < max_len"),
        ({"tokenizer_path": "", "vocab_size": 100}, "vocab_size must be an integer >= 261"),
        ({"num_samples": 1, "sample_top_p": 0.0}, "top_p"),
        ({"seed": -1}, "seed must be an integer in .0, 2..32., got -1"),  # was a grain traceback mid-run
        ({"seed": 2**32}, "seed must be an integer in"),  # JAX would keep its low 32 bits: seed 0
    ],
)
def test_bad_config_values_fail_before_anything_is_written(prepared, tmp_path, bad, message):
    with pytest.raises(UsageError, match=message):
        train(tiny(prepared, **bad), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_cli_bad_config_value_is_one_error_line_and_exit_2(tmp_path, capsys):
    argv = ["--config", "configs/sft_hh_tiny.py", "--config.log_every=0", "--workdir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as e:
        run_main(main, argv)
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: log_every must be an integer >= 1, got 0\n"
    assert not (tmp_path / "run").exists()


def test_workdir_that_is_or_lies_under_a_file_is_a_usage_error(prepared, tmp_path):
    f = tmp_path / "afile"
    f.write_text("precious")
    for wd, blocker in ((f, "it exists"), (f / "sub", f"{f} exists")):
        with pytest.raises(UsageError, match=f"workdir {wd} cannot be a directory: {blocker} and is not a"):
            train(tiny(prepared), str(wd))
    with pytest.raises(UsageError, match="data_dir .* cannot be a directory"):
        train(tiny(prepared, data_dir=str(f)), str(tmp_path / "run"))
    assert f.read_text() == "precious" and [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_resume_with_other_model_or_vocab_is_refused_and_touches_nothing(prepared, tmp_path):
    wd = tmp_path / "run"
    train(tiny(prepared, num_steps=2, checkpoint_every=1), str(wd))
    shutil.rmtree(wd / "export")  # an unfinished run: rerunning resumes it
    saved = json.loads((wd / "run_config.json").read_text())
    assert saved["model"]["hidden_size"] == 32 and saved["num_steps"] == 2
    before = snapshot(wd)
    refused = r"\); resuming it would mix them — pass --overwrite"
    with pytest.raises(UsageError, match=rf"other settings \(model.hidden_size: 32 -> 64{refused}"):
        train(_wider(prepared), str(wd))
    assert snapshot(wd) == before
    # A workdir without run_config.json (written before it existed): the checkpoint's shapes are compared.
    (wd / "run_config.json").unlink()
    before = snapshot(wd)
    with pytest.raises(UsageError, match=r"checkpoint 2 parameter shapes: embed: \(320, 32\) -> \(320, 64\)"):
        train(_wider(prepared), str(wd))
    assert snapshot(wd) == before
    with pytest.raises(UsageError, match="checkpoint 2 in .* does not fit the model config"):
        load_checkpoint(wd, _wider(prepared))
    # The run's own config still resumes it (and records run_config.json again).
    assert train(tiny(prepared, num_steps=3, checkpoint_every=1), str(wd))["steps"] == 3
    assert json.loads((wd / "run_config.json").read_text())["num_steps"] == 3
    # Any other setting but run length / logging / samples / paths is refused too: a resume with another seed
    # (or learning rate, batch size, ...) used to continue silently, giving numbers no fresh run gives.
    shutil.rmtree(wd / "export")
    before = snapshot(wd)
    changes = (({"seed": 4}, "seed: 3 -> 4"), ({"learning_rate": 0.5}, "learning_rate: 0.01 -> 0.5"))
    for change, shown in changes:
        with pytest.raises(UsageError, match=rf"other settings \({shown}{refused}"):
            train(tiny(prepared, num_steps=4, checkpoint_every=1, **change), str(wd))
    assert snapshot(wd) == before


def _wider(prepared, **kw):
    """:func:`tiny` with a wider model (hidden size 64 instead of 32)."""
    c = tiny(prepared, **kw)
    c.model.hidden_size = 64
    return c


def test_overwrite_checks_every_input_before_removing_the_old_run(prepared, tmp_path):
    wd = tmp_path / "run"
    train(tiny(prepared, num_steps=2, checkpoint_every=1), str(wd))
    before = snapshot(wd)
    damaged = tmp_path / "damaged_tok"  # a truncated tokenizer.json was a JSONDecodeError traceback
    shutil.copytree(prepared / "tok", damaged)
    (damaged / "tokenizer.json").write_text((damaged / "tokenizer.json").read_text()[:500])
    bad_inputs = [
        (
            {"data_dir": str(tmp_path / "typo"), "manual_dir": str(tmp_path / "no_hh")},
            "HH-RLHF directory not",
        ),
        ({"tokenizer_path": str(tmp_path / "no_tok")}, "no tokenizer.json in .*no_tok"),
        ({"tokenizer_path": str(damaged)}, "cannot load the tokenizer in .*damaged_tok"),
        ({"log_every": 0}, "log_every must be"),
        ({"batch_size": 4096}, "need at least batch_size"),
    ]
    for bad, message in bad_inputs:
        with pytest.raises(UsageError, match=message):
            train(tiny(prepared, **bad), str(wd), overwrite=True)
        assert snapshot(wd) == before, bad
    assert not (tmp_path / "typo").exists()
    # Valid inputs: the old run is replaced, even by a run of another model.
    assert train(_wider(prepared, num_steps=1), str(wd), overwrite=True)["steps"] == 1
    assert json.loads((wd / "run_config.json").read_text())["model"]["hidden_size"] == 64
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["1"]
    assert [r["step"] for r in metrics_rows(wd)] == [1, 1]  # train + eval rows of the new run only


def test_overwrite_starts_from_scratch_with_a_new_tokenizer(prepared, tmp_path):
    wd = tmp_path / "run"
    own_tokenizer = {"tokenizer_path": "", "num_steps": 2, "checkpoint_every": 1}
    train(tiny(prepared, vocab_size=300, **own_tokenizer), str(wd))
    assert len(load_tokenizer(wd / "tokenizer")) == 300
    shutil.rmtree(wd / "export")
    before = snapshot(wd)
    with pytest.raises(UsageError, match=r"other settings \(vocab_size: 300 -> 280\)"):  # resuming keeps it
        train(tiny(prepared, vocab_size=280, **own_tokenizer), str(wd))
    assert snapshot(wd) == before
    res = train(tiny(prepared, vocab_size=280, **{**own_tokenizer, "num_steps": 1}), str(wd), overwrite=True)
    assert res["steps"] == 1
    assert len(load_tokenizer(wd / "tokenizer")) == 280
    _, tok = from_pretrained(wd / "export")
    assert len(tok) == 280
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["1"]
    assert [r["step"] for r in metrics_rows(wd)] == [1, 1]  # train + eval rows of the new run only


def test_two_processes_match_one(prepared, tmp_path, repo_root):
    """SFT as 2 jax.distributed processes on 127.0.0.1, each started through the CLI with --distributed
    --coordinator ... (2 CPU devices each; process 0 alone writes, the
    other waits at the workdir barrier) gives the run of one process on 8 devices: train and eval loss to 1e-6
    (float32 roundoff of another reduction order: 5e-7 measured), parameters to 2e-4 (Adam's 1/sqrt(v) turns
    roundoff of tiny gradients into relative changes of lr-sized steps; 8e-5 measured after 6 steps at lr
    1e-2)."""
    one = train(tiny(prepared), tmp_path / "one")
    work = tmp_path / "two"
    run_workers(__file__, prepared, work, cwd=repo_root)
    two = json.loads((work / "eval.json").read_text())
    assert abs(two["train_loss_last"] - one["train_loss_last"]) < 1e-6
    assert abs(two["eval_loss"] - one["eval_loss"]) < 1e-6
    a, b = (load_file(w / "export" / "model.safetensors") for w in (tmp_path / "one", work))
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 2e-4


if __name__ == "__main__":  # the worker of test_two_processes_match_one: the CLI with --distributed
    pid, port, root, work = sys.argv[1:]
    jax.config.update("jax_num_cpu_devices", 2)
    dist = ["--distributed", f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={pid}"]
    assert main([*cli_args(Path(root)), "--workdir", work, *dist]) == 0
    assert jax.process_count() == 2 and jax.device_count() == 4
    jax.distributed.shutdown()
