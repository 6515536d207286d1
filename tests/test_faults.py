"""The fault suite (issue 18): bad inputs to every CLI end as promised — exit 2, exactly one ``error:`` line
on stderr (no traceback, no warning noise), and no file of the inputs or of an existing workdir created,
changed or removed.

Cases run in this process through each CLI's ``main`` wrapped by :func:`infalign_jax.cli.run_main` (what
``python -m`` runs), capturing the process's stderr file descriptor, so absl / Orbax / TFDS log lines would
show too; :func:`test_process_boundary` repeats a few through real ``python -m`` processes. One tiny bandit
workdir (a finished 3-step run) is shared by every case that needs an earlier run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from infalign_jax.cli import run_main

BANDIT = "configs/ctrl_bandit.py"
HH = "configs/ctrl_hh_harmless.py"
SFT = "configs/sft_hh_tiny.py"
RM = "configs/rm_hh_harmless.py"
TINY = [  # the 3-step bandit run
    "--config.num_steps=3",
    "--config.num_samples=8",
    "--config.num_ref=8",
    "--config.bandit.num_contexts=4",
    "--config.prompts_per_step=4",
    "--config.bandit.num_responses=16",
    "--config.checkpoint_every=1",
    "--config.progress=False",
]


def _main(name: str):
    import importlib

    module = {
        "train": "infalign_jax.train",
        "sft": "infalign_jax.sft",
        "train_rm": "infalign_jax.train_rm",
        "calibrate": "infalign_jax.calibrate",
        "sample": "infalign_jax.sample",
        "main": "infalign_jax.main",
        "analytic": "infalign_jax.commands.analytic",
        "data.hh": "infalign_jax.commands.hh_data",
        "tokenizer_train": "infalign_jax.tokenizer_train",
    }[name]
    return importlib.import_module(module).main


@dataclass(frozen=True)
class Case:
    cli: str
    argv: tuple[str, ...]  # "{X}" is replaced by the path of fixture file / directory X
    message: str  # a substring of the error line

    @property
    def id(self) -> str:
        shown = [a for a in self.argv if a not in TINY and a not in (BANDIT, HH, SFT, RM, "--config")]
        return f"{self.cli}: {' '.join(shown)}"


def train(*extra, workdir="{fresh}"):
    return ("--config", BANDIT, *TINY, *extra, "--workdir", workdir)


def sft(*extra, workdir="{fresh}"):
    return ("--config", SFT, *extra, "--workdir", workdir)


def rm(*extra):
    return ("--config", RM, *extra, "--workdir", "{fresh}")


def calibrate(*extra):
    return ("--config", HH, *extra, "--workdir", "{fresh}")


def sample(*extra, model="{llama}"):
    return ("--model", model, "--prompt", "hello", "--n", "2", "--max-new-tokens", "3", *extra)


def hh(manual: str, *extra):
    return ("--manual-dir", manual, "--data-dir", "{fresh}", *extra)


CASES = [
    # ---- train: non-finite / absurd config values, refused before any work
    Case("train", train("--config.beta=inf"), "beta must be > 0 and finite, got inf"),
    Case("train", train("--config.beta=nan"), "beta must be > 0 and finite, got nan"),
    Case("train", train("--config.beta=0"), "beta must be > 0"),
    Case(
        "train", train("--config.bandit.ref_scale=nan"), "bandit.ref_scale must be a finite number, got nan"
    ),
    Case("train", train("--config.optim.lr=nan"), "optim.lr must be > 0 and finite, got nan"),
    Case("train", train("--config.optim.lr=-0.1"), "optim.lr must be > 0"),
    Case("train", train("--config.optim.b2=1.0"), "optim.b2 must be >= 0 and < 1"),
    Case("train", train("--config.optim.weight_decay=-1.0"), "optim.weight_decay must be >= 0"),
    Case("train", train("--config.optim.max_grad_norm=-inf"), "optim.max_grad_norm must be >= 0"),
    Case("train", train("--config.kl_budget=nan"), "kl_budget must be > 0 and finite, got nan"),
    Case("train", train("--config.clip_eps=1.5"), "clip_eps must be >= 0 and < 1"),
    Case("train", train("--config.num_samples=1"), "num_samples must be an integer >= 2"),
    Case("train", train("--config.num_samples=100000000"), "num_samples=100000000, num_ref=8: the [P, S, K]"),
    Case("train", train("--config.bandit.num_contexts=1000000000"), "bandit.num_contexts x num_responses"),
    Case("train", train("--config.bandit.num_responses=1"), "bandit.num_responses must be an integer >= 2"),
    Case("train", train("--config.max_to_keep=0"), "max_to_keep must be an integer >= 1, got 0"),
    Case("train", train("--config.mesh.fsdp=0"), "mesh.fsdp must be an integer >= 1, got 0"),
    Case("train", train("--config.seed=-1"), "seed must be an integer in"),
    Case("train", train("--config.optim.schedule=bogus"), "unknown lr schedule 'bogus'"),
    # malformed specs and damaged / missing files
    Case("train", train("--config.transform=table:{not_zip}"), "neither a zip archive nor a .npy array"),
    Case("train", train("--config.transform=table:{empty_npz}"), "not an npz with arrays 'u' and 'phi'"),
    Case("train", train("--config.transform=table:{truncated_npz}"), "BadZipFile"),
    Case("train", train("--config.transform=table:{flipped_npz}"), "is missing or damaged"),
    Case("train", train("--config.transform=table:{npy}"), "single array"),
    Case("train", train("--config.transform=table:{no_phi_npz}"), "no array(s) phi"),
    Case("train", train("--config.transform=table:{nan_npz}"), "table holds non-finite values"),
    Case("train", train("--config.transform=table:{missing}"), "does not exist"),
    Case("train", train("--config.transform=exp:abc"), "exp:abc"),
    Case("train", train("--config.transform=bogus"), "unknown transform 'bogus'"),
    Case(
        "train", train("--config.procedure=bon:0"), "number of draws n must be an integer in [1, 1000], got 0"
    ),
    Case("train", train("--config.procedure=won:4", "--config.transform=exp:8"), "needs t < 0"),
    Case("train", train("--bogus"), "bogus"),
    Case("train", train("--config.not_a_field=1"), "not_a_field"),
    Case("train", ("--config", BANDIT, *TINY), "--workdir is required"),
    Case("train", ("--config", "{missing}", "--workdir", "{fresh}"), "does not exist"),
    Case("train", ("--config", "{not_zip}", "--workdir", "{fresh}"), "failed to load"),
    Case("train", train(workdir="{afile}"), "not a directory"),
    Case("train", train("--config.beta=0.9", workdir="{bandit_run}"), "beta: 0.338 -> 0.9"),
    Case("train", train("--config.optim.lr=nan", workdir="{bandit_run}"), "optim.lr must be > 0"),
    # ---- sft: config values before anything is loaded or written
    Case("sft", sft("--config.learning_rate=nan"), "learning_rate must be > 0 and finite, got nan"),
    Case("sft", sft("--config.learning_rate=0"), "learning_rate must be > 0"),
    Case("sft", sft("--config.b1=1.0"), "b1 must be >= 0 and < 1"),
    Case("sft", sft("--config.grad_clip=0"), "grad_clip must be > 0"),
    Case("sft", sft("--config.weight_decay=-1"), "weight_decay must be >= 0"),
    Case("sft", sft("--config.end_lr_fraction=nan"), "end_lr_fraction must be >= 0 and finite"),
    Case("sft", sft("--config.batch_size=0"), "batch_size must be an integer >= 1"),
    Case("sft", sft("--config.buckets=(16,)"), "largest bucket"),
    Case("sft", sft("--config.vocab_size=100000000"), "batch_size x max_len x vocab_size"),
    Case("sft", sft("--config.tokenizer_path={missing}"), "missing"),
    Case("sft", sft("--config.sample_top_p=1.5"), "top_p must be in (0, 1]"),
    Case("sft", sft("--config.seed=-1"), "seed must be an integer in"),
    Case("sft", sft("--bogus"), "bogus"),
    Case("sft", sft(workdir="{afile}"), "not a directory"),
    Case("sft", sft("--config.data_dir={one_pair_data}"), "dialogues: need at least batch_size (16) / 1"),
    # ---- train_rm
    Case("train_rm", rm("--config.train.head_learning_rate=nan"), "train.head_learning_rate must be > 0"),
    Case("train_rm", rm("--config.train.finetune_learning_rate=inf"), "finetune_learning_rate must be > 0"),
    Case("train_rm", rm("--config.train.head_steps=0"), "train.head_steps must be an integer >= 1"),
    Case("train_rm", rm("--config.eval.n_boot=0"), "eval.n_boot must be an integer >= 1"),
    Case("train_rm", rm("--config.data.max_train_pairs=-1"), "data.max_train_pairs must be an integer >= 0"),
    Case("train_rm", rm("--config.model.backbone=bert"), "backbone"),
    Case("train_rm", rm("--config.seed=-1"), "seed must be an integer in"),
    Case("train_rm", ("--config", RM, "--workdir", "{afile}"), "not a directory"),
    Case("train_rm", rm("--config.data.data_dir={one_pair_data}"), "split of {one_pair_data} is empty"),
    # ---- calibrate
    Case("calibrate", ("--config", BANDIT, "--workdir", "{fresh}"), "builds tables for problem 'hh'"),
    Case("calibrate", calibrate("--config.beta=inf"), "beta must be > 0 and finite, got inf"),
    Case("calibrate", calibrate("--config.num_ref=0"), "num_ref must be an integer >= 1"),
    Case("calibrate", calibrate("--config.hh.calibration_batch_prompts=0"), "hh.calibration_batch_prompts"),
    Case("calibrate", calibrate("--config.hh.policy_path={missing}"), "no SFT policy export"),
    Case("calibrate", calibrate("--config.seed=-1"), "seed must be an integer in"),
    # ---- sample
    Case("sample", sample(model="{missing}"), "is not 'gemma3-270m'"),
    Case("sample", sample(model="{nan_model}"), "non-finite (NaN/inf) log-probabilities"),
    Case("sample", sample(model="{no_weights_model}"), "no_weights_model"),
    Case("sample", sample(model="{garbage_config_model}"), "config.json"),
    Case("sample", sample("--temperature", "nan"), "temperature must be a finite number"),
    Case("sample", sample("--top-p", "0"), "top_p must be in (0, 1]"),
    Case("sample", sample("--top-k", "-1"), "top_k must be an integer >= 0"),
    Case("sample", sample("--n", "0"), "--n must be >= 1"),
    Case("sample", sample("--max-new-tokens", "0"), "--max-new-tokens must be >= 1"),
    Case("sample", sample("--seed", "x"), "--seed: invalid int value"),
    # ---- main (the end-to-end job)
    Case("main", ("--kl", "nan", "--workdir", "{fresh}"), "--kl must be > 0 and <= 2 and finite, got nan"),
    Case("main", ("--kl", "3", "--workdir", "{fresh}"), "--kl must be > 0 and <= 2"),
    Case("main", ("--steps", "0", "--workdir", "{fresh}"), "--steps must be an integer >= 1"),
    Case("main", ("--procedure", "bogus", "--workdir", "{fresh}"), "bogus"),
    Case("main", ("--seed", "-1", "--workdir", "{fresh}"), "--seed must be an integer in"),
    Case("main", ("--workdir", "{afile}"), "not a directory"),
    Case("main", ("--bogus",), "bogus"),
    # ---- analytic
    Case("analytic", ("--kl", "nan"), "--kl: every budget must be in"),
    Case("analytic", ("--kl", "abc"), "'abc' is not a number"),
    Case("analytic", ("--procedure", "bon:0"), "number of draws n must be an integer"),
    Case("analytic", ("--grid", "8"), "grid must be an integer"),
    Case("analytic", ("--plot", "{afile}/x.png"), "not a directory"),
    Case("analytic", ("--beta-for-transform", "-1", "--export-transform", "{fresh}.npz"), "positive number"),
    # ---- data.hh: damaged inputs, empty datasets
    Case("data.hh", hh("{hh_surrogate}"), "test.jsonl.gz:2: chosen holds '\\ud800' at character"),
    Case("data.hh", hh("{hh_surrogate_only}", "--skip-bad"), "skipped: invalid_unicode 1"),
    Case("data.hh", hh("{hh_zero_bytes}"), "no valid preference pairs"),
    Case("data.hh", hh("{hh_empty_gzip}"), "no valid preference pairs"),
    Case("data.hh", hh("{hh_whitespace}"), "(0 non-blank lines)"),
    Case("data.hh", hh("{hh_all_bad}", "--skip-bad"), "malformed_json 1, missing_key 1"),
    Case("data.hh", hh("{hh_all_bad}"), "test.jsonl.gz:1: malformed JSON"),
    Case("data.hh", hh("{hh_not_gzip}"), "cannot read gzip'd UTF-8 text"),
    Case("data.hh", hh("{missing}"), "HH-RLHF directory not found"),
    Case("data.hh", hh("{hh_surrogate}", "--eval-percent", "0"), "eval_percent must be in (0, 100)"),
    Case("data.hh", hh("{hh_surrogate}", "--bogus"), "unrecognized arguments: --bogus"),
    # ---- tokenizer_train
    Case("tokenizer_train", ("--vocab-size", "10", "--out", "{fresh}"), "vocab_size"),
    Case("tokenizer_train", ("--min-frequency", "-1", "--out", "{fresh}"), "min_frequency must be in"),
    Case("tokenizer_train", ("--out", "{afile}"), "--out {afile} cannot be a directory"),
    Case("tokenizer_train", ("--data-dir", "{missing}", "--out", "{fresh}"), "no HH dataset at"),
    Case("tokenizer_train", ("--bogus",), "unrecognized arguments: --bogus"),
]


def _gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)


def _pair(q: str) -> str:
    return json.dumps(
        {"chosen": f"\n\nHuman: {q}\n\nAssistant: a", "rejected": f"\n\nHuman: {q}\n\nAssistant: b"}
    )


# a lone surrogate as a JSON escape: valid JSON, but not text (UTF-8 cannot encode it)
SURROGATE_LINE = (
    '{"chosen": "\\n\\nHuman: q\\ud800\\n\\nAssistant: a", "rejected": "\\n\\nHuman: q\\n\\nAssistant: b"}'
)


def _model_copy(src: Path, dst: Path, damage) -> Path:
    shutil.copytree(src, dst)
    damage(dst)
    return dst


def _nan_weights(d: Path) -> None:
    from safetensors.numpy import load_file, save_file

    f = d / "model.safetensors"
    tensors = load_file(f)
    name = sorted(tensors)[0]
    tensors[name] = np.full_like(tensors[name], np.nan)
    save_file(tensors, f, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def paths(tmp_path_factory, repo_root):
    """Every fixture file a case names (``{name}`` in its argv), under one directory the cases must leave
    unchanged; ``{bandit_run}`` is a finished 3-step bandit run."""
    root = tmp_path_factory.mktemp("faults")
    p = {"missing": root / "missing", "afile": root / "afile"}
    p["afile"].write_text("keep")
    p["not_zip"] = root / "not_zip.npz"
    p["not_zip"].write_text("hello")
    p["empty_npz"] = root / "empty.npz"
    p["empty_npz"].write_bytes(b"")
    u = np.linspace(0, 1, 33)
    np.savez(root / "ok.npz", u=u, phi=u**2)
    good = (root / "ok.npz").read_bytes()
    p["truncated_npz"] = root / "truncated.npz"
    p["truncated_npz"].write_bytes(good[: len(good) // 2])
    flipped = bytearray(good)
    flipped[120] ^= 0xFF  # inside the first member's data: a CRC mismatch
    p["flipped_npz"] = root / "flipped.npz"
    p["flipped_npz"].write_bytes(bytes(flipped))
    p["npy"] = root / "bare.npy"
    np.save(p["npy"], u)
    p["no_phi_npz"] = root / "no_phi.npz"
    np.savez(p["no_phi_npz"], u=u)
    p["nan_npz"] = root / "nan.npz"
    np.savez(p["nan_npz"], u=u, phi=np.where(u > 0.5, np.nan, u))
    # HH inputs (<dir>/harmless-base/test.jsonl.gz)
    hh_files = {
        "hh_surrogate": _pair("q1") + "\n" + SURROGATE_LINE + "\n",
        "hh_surrogate_only": SURROGATE_LINE + "\n",
        "hh_whitespace": "  \n\t\n\n",
        "hh_all_bad": "not json\n{}\n",
        "hh_empty_gzip": "",
    }
    for name, text in hh_files.items():
        p[name] = root / name
        _gz(p[name] / "harmless-base" / "test.jsonl.gz", text)
    p["hh_zero_bytes"] = root / "hh_zero_bytes"
    (p["hh_zero_bytes"] / "harmless-base").mkdir(parents=True)
    (p["hh_zero_bytes"] / "harmless-base" / "test.jsonl.gz").write_bytes(b"")
    p["hh_not_gzip"] = root / "hh_not_gzip"
    (p["hh_not_gzip"] / "harmless-base").mkdir(parents=True)
    (p["hh_not_gzip"] / "harmless-base" / "test.jsonl.gz").write_text(_pair("q") + "\n")
    # model directories
    llama = repo_root / "tests" / "fixtures" / "models" / "llama"
    p["llama"] = _model_copy(llama, root / "llama", lambda d: None)
    p["nan_model"] = _model_copy(llama, root / "nan_model", _nan_weights)
    p["no_weights_model"] = _model_copy(
        llama, root / "no_weights_model", lambda d: (d / "model.safetensors").unlink()
    )
    p["garbage_config_model"] = _model_copy(
        llama, root / "garbage_config_model", lambda d: (d / "config.json").write_text("{not json")
    )
    # a built HH dataset of one pair: one of its two splits is empty
    from infalign_jax.data.hh import build_hh

    _gz(root / "hh_one_pair" / "harmless-base" / "test.jsonl.gz", _pair("q1") + "\n")
    p["one_pair_data"] = root / "one_pair_data"
    build_hh(root / "hh_one_pair", p["one_pair_data"])
    # a finished 3-step bandit run
    p["bandit_run"] = root / "bandit_run"
    with pytest.raises(SystemExit) as e:
        run_main(_main("train"), list(train(workdir=str(p["bandit_run"]))))
    assert e.value.code == 0
    return root, {k: str(v) for k, v in p.items()}


def _tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file (and '<dir>' for every directory) under ``root``."""
    out = {}
    for f in sorted(root.rglob("*")):
        rel = str(f.relative_to(root))
        out[rel] = "<dir>" if f.is_dir() else hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _subst(text: str, names: dict[str, str], fresh: Path) -> str:
    for k, v in {**names, "fresh": str(fresh)}.items():
        text = text.replace("{" + k + "}", v)
    return text


def _argv(case: Case, names: dict[str, str], fresh: Path) -> list[str]:
    return [_subst(a, names, fresh) for a in case.argv]


def _assert_refused(code, err: str, message: str) -> None:
    assert "Traceback" not in err, err
    lines = err.strip("\n").split("\n")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), f"exit {code}, stderr:\n{err}"
    assert message in lines[0], lines[0]


def test_at_least_60_cases_over_every_cli():
    per_cli = {c: sum(case.cli == c for case in CASES) for c in dict.fromkeys(case.cli for case in CASES)}
    assert len(CASES) >= 60 and len(per_cli) == 9 and min(per_cli.values()) >= 4, per_cli


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_error_line_exit_2_nothing_touched(case, paths, tmp_path, capfd, monkeypatch):
    root, names = paths
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # config paths are relative to the repo
    fresh = tmp_path / "out"
    before = _tree_digest(root)
    capfd.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(_main(case.cli), _argv(case, names, fresh))
    _, err = capfd.readouterr()
    _assert_refused(e.value.code, err, _subst(case.message, names, fresh))
    assert _tree_digest(root) == before  # inputs and the earlier run: nothing created, changed or removed
    assert not fresh.exists() and not Path(str(fresh) + ".npz").exists()


PROCESS_CASES = [  # through `python -m`: the interpreter's own exit and logging are part of what is checked
    Case("infalign_jax.train", train("--config.optim.lr=nan"), "optim.lr must be > 0"),
    Case("infalign_jax.sft", sft("--config.learning_rate=nan"), "learning_rate must be > 0"),
    Case("infalign_jax.data.hh", hh("{hh_surrogate}"), "lone UTF-16 surrogate"),
    Case("infalign_jax.sample", sample(model="{nan_model}"), "non-finite"),
]


def test_process_boundary(paths, tmp_path, repo_root):
    root, names = paths
    before = _tree_digest(root)
    for case in PROCESS_CASES:
        fresh = tmp_path / case.cli
        res = subprocess.run(
            [sys.executable, "-m", case.cli, *_argv(case, names, fresh)],
            cwd=repo_root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        _assert_refused(res.returncode, res.stderr, _subst(case.message, names, fresh))
        assert not fresh.exists()
    assert _tree_digest(root) == before


def test_json_writer_refuses_non_finite_numbers(tmp_path):
    """NaN / inf are not JSON: atomic_write_json used to write ``NaN`` (an eval.json no JSON parser reads);
    now one ValueError naming the file and the key, and the earlier file is kept."""
    from infalign_jax.io_utils import atomic_write_json

    path = tmp_path / "eval.json"
    atomic_write_json(path, {"eval_loss": 1.5})
    for bad, where in [({"a": {"b": [1.0, float("nan")]}}, "a.b[1]"), ({"x": float("-inf")}, "x")]:
        with pytest.raises(
            ValueError, match=rf"refusing to write {path}: {re.escape(where)} is not a finite"
        ):
            atomic_write_json(path, bad)
        assert json.loads(path.read_text()) == {"eval_loss": 1.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]  # no temporary file left


def test_sft_nan_loss_stops_before_any_checkpoint_export_or_json(hh_dir, tmp_path, repo_root, capfd):
    """A learning rate of 1e30 (finite, so accepted) blows the weights up to NaN at step 2: the run stops
    with exit 1 and one error line before any NaN is logged, checkpointed, exported or written to eval.json
    (it used to train on, save NaN checkpoints, export NaN weights and write ``"eval_loss": NaN``)."""
    from infalign_jax.data.hh import build_hh
    from infalign_jax.data.tokenizer import train_hh_tokenizer
    from infalign_jax.sft import main as sft_main

    build_hh(hh_dir, tmp_path / "data")
    train_hh_tokenizer(tmp_path / "data", tmp_path / "tok", vocab_size=320)
    model = dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16)
    values = {"data_dir": tmp_path / "data", "tokenizer_path": tmp_path / "tok"}
    values.update({f"model.{k}": v for k, v in model.items()})
    values.update(max_len=32, max_prompt_len=16, buckets=(32,), batch_size=8, num_steps=6, num_samples=0)
    values.update(learning_rate=1e30, warmup_steps=0, log_every=1, eval_every=2, checkpoint_every=2)
    argv = ["--config", str(repo_root / SFT), *(f"--config.{k}={v}" for k, v in values.items())]
    work = tmp_path / "w"
    capfd.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(sft_main, [*argv, "--workdir", str(work)])
    err = capfd.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert e.value.code == 1 and "Traceback" not in err, err
    assert len(errors) == 1 and "non-finite SFT values by step 2" in errors[0], err
    assert "last checkpoint: none" in errors[0]
    assert not (work / "export").exists() and not (work / "eval.json").exists()
    assert not any((work / "checkpoints").iterdir())
    for line in (work / "metrics.jsonl").read_text().splitlines():
        assert all(np.isfinite(v) for v in json.loads(line).values() if isinstance(v, float)), line


def test_library_absl_warnings_do_not_print_around_a_refusal():
    """Orbax logs through absl (``WARNING:absl:Metadata file does not exist: ...`` before a refusal, once a
    library has configured Python logging): the CLIs silence absl warnings, so a refusal stays one line. A
    process of its own: pytest's logging capture would hide the line."""
    script = (
        "import logging; logging.basicConfig()\n"
        "from absl import logging as absl_logging\n"
        "from infalign_jax.cli import UsageError, run_main\n"
        "def main(argv):\n"
        "    absl_logging.warning('Metadata file does not exist: /w/checkpoints/99/_CHECKPOINT_METADATA')\n"
        "    raise UsageError('refused')\n"
        "run_main(main)\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    _assert_refused(res.returncode, res.stderr, "error: refused")


def test_resume_settings_comparison_treats_nan_as_equal_to_itself():
    """A NaN recorded by an earlier run (before NaN was refused up front) used to make every rerun with the
    same flags fail as ``optim.lr: nan -> nan``; other differences still show."""
    from infalign_jax.run_settings import diffs

    nan = float("nan")
    assert diffs({"optim.lr": nan, "grid": [0.5, nan]}, {"optim.lr": nan, "grid": [0.5, nan]}) == []
    assert diffs({"optim.lr": nan}, {"optim.lr": 0.1}) == ["optim.lr: nan -> 0.1"]
    assert diffs({"beta": 1}, {"beta": 1.0}) == []  # equal numbers of two types stay equal
