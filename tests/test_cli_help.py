"""Every CLI answers ``-h`` / ``--help`` with exit 0 and its flags; the config-driven ones also list every
config field with its default and the description from the config file's comments — without data, models or
a home directory. The summaries and ``already complete:`` lines of the training CLIs are tested beside their
tiny runs (test_train_cli, test_sft, test_train_rm, test_main, test_ctrl_hh, test_data_hh)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from infalign_jax.cli import help_requested, load_config_file, run_summary
from infalign_jax.config_docs import config_docs, config_file_docs, format_fields, source_docs

# CLI module -> flags its help must show.
CLIS = {
    "infalign_jax.train": ["--config FILE", "--workdir", "--[no]distributed", "--coordinator"],
    "infalign_jax.sft": ["--config FILE", "--workdir", "--[no]overwrite", "--[no]distributed"],
    "infalign_jax.train_rm": ["--config FILE", "--workdir"],
    "infalign_jax.calibrate": ["--config FILE", "--workdir"],
    "infalign_jax.sample": ["--model", "--prompt", "--temperature", "--top-p", "--seed"],
    "infalign_jax.main": ["--procedure", "--kl", "--workdir", "--seed", "--steps"],
    "infalign_jax.analytic": ["--procedure", "--kl", "--grid", "--json", "--plot"],
    "infalign_jax.data.hh": ["--manual-dir", "--data-dir", "--subsets", "--skip-bad"],
    "infalign_jax.tokenizer_train": ["--data-dir", "--out", "--vocab-size", "--overwrite"],
    "infalign_jax.evaluate": ["--policy", "--reference", "--judge", "--samples", "--procedures", "--workdir"],
    "infalign_jax.experiments.hh_harmless": ["--workdir", "--scale", "--seed", "--results"],
}
# Config-driven CLI -> its default config (what --help documents without --config).
DEFAULT_CONFIGS = {
    "infalign_jax.train": "configs/ctrl_bandit.py",
    "infalign_jax.sft": "configs/sft_hh_tiny.py",
    "infalign_jax.train_rm": "configs/rm_hh_harmless.py",
    "infalign_jax.calibrate": "configs/ctrl_hh_harmless.py",
}
CUSTOM_CONFIG = """
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.alpha = 1.5  # the alpha knob

    # Section two.
    c.sub = ml_collections.ConfigDict()
    c.sub.gamma = (1, 2)
    return c
"""
# Runs every CLI's ``__main__`` in one process (as ``python -m`` does), with each help flag, and prints one
# JSON object {"<module> <flag>": [exit code, stdout, stderr]}.
DRIVER = r"""
import contextlib, io, json, runpy, sys, warnings
warnings.simplefilter("ignore", RuntimeWarning)  # runpy: "found in sys.modules" (imported by another CLI)
runs, out = json.loads(sys.argv[1]), {}
for module, args in runs:
    sys.argv = [module, *args]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code or 0
    out[" ".join([module, *args])] = [code, stdout.getvalue(), stderr.getvalue()]
sys.stdout.write(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps(repo_root, tmp_path_factory):
    """``{"<module> <args>": (exit code, stdout, stderr)}`` of every CLI with ``-h`` and ``--help`` (and a
    config CLI with ``--config FILE --help``), run from an empty directory with HOME an empty directory and
    INFALIGN_HH_DIR a path that does not exist; plus one real ``python -m ... --help`` (stdout, code) and
    the entries left in HOME afterwards."""
    home, cwd = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("cwd")
    custom = cwd / "custom.py"
    custom.write_text(CUSTOM_CONFIG)
    env = {**os.environ, "HOME": str(home), "INFALIGN_HH_DIR": "/nonexistent", "PYTHONPATH": str(repo_root)}
    runs = [(m, [flag]) for m in CLIS for flag in ("-h", "--help")]
    runs += [
        ("infalign_jax.train", ["--config", str(repo_root / "configs/ctrl_hh_harmless.py"), "--help"]),
        ("infalign_jax.train", ["--config", str(custom), "-h"]),
        ("infalign_jax.sft", ["--workdir", "w", "--config.num_steps=3", "--help"]),
    ]
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(runs)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    real = subprocess.run(
        [sys.executable, "-m", "infalign_jax.train", "--help"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out, err = driver.communicate(timeout=180)
    assert driver.returncode == 0, err[-3000:]
    results = {k: tuple(v) for k, v in json.loads(out).items()}
    return {"runs": results, "real": real, "home": sorted(os.listdir(home)), "cwd": sorted(os.listdir(cwd))}


@pytest.mark.parametrize("module", sorted(CLIS))
def test_help_exits_0_and_lists_the_flags(helps, module):
    short, long = helps["runs"][f"{module} -h"], helps["runs"][f"{module} --help"]
    assert short == long, "-h and --help differ"
    code, out, err = long
    assert code == 0, err[-2000:]
    assert out.startswith("usage:") and f"python -m {module}" in out
    assert "-h, --help" in out
    for flag in CLIS[module]:
        assert flag in out, flag


@pytest.mark.parametrize("module", sorted(DEFAULT_CONFIGS))
def test_config_help_lists_every_field_with_default_and_description(helps, repo_root, module):
    """Without --config the help documents the CLI's default config: every field as ``name = default`` with
    the description of the config file's comments beside it (every shipped field has one)."""
    _, out, _ = helps["runs"][f"{module} --help"]
    path = repo_root / DEFAULT_CONFIGS[module]
    assert f"config fields of {path}" in out
    lines = out.splitlines()
    fields = config_file_docs(path)
    assert len(fields) > 10
    for f in fields:
        head = f"  {f.name} = {f.default!r}"
        assert f.description, f"{path.name}: {f.name} has no comment"
        assert f"{head:<44}  {f.description}" in lines, f.name
    assert {f.name for f in fields} == set(_leaf_names(load_config_file(path)))


def _leaf_names(config, prefix=""):
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from _leaf_names(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_known_fields_defaults_and_comments(helps):
    _, train, _ = helps["runs"]["infalign_jax.train --help"]
    assert "  beta = 0.338" in train
    assert "KL penalty weight β (0.338: the identity optimum at KL 0.3)" in train
    assert "  # CTRL objective (paper Sec. 4, Alg. 1)." in train
    assert "  transform = 'identity'" in train and "identity | log | exp:T | table:PATH | lsc | raw" in train
    assert "  optim.lr = 0.1" in train and "  bandit.num_responses = 1000" in train
    _, sft, _ = helps["runs"]["infalign_jax.sft --help"]
    assert "  model.hidden_size = 192" in sft and "model width" in sft and "  buckets = (64, 96, 128)" in sft
    _, rm, _ = helps["runs"]["infalign_jax.train_rm --help"]
    assert "  train.head_l2 = (0.01, 0.1, 1.0, 10.0)" in rm and "picked by 5-fold CV on train" in rm
    _, cal, _ = helps["runs"]["infalign_jax.calibrate --help"]
    assert "  hh.num_prompts = 32" in cal and "the first N prompts of the split" in cal


def test_help_documents_the_config_given(helps, repo_root):
    hh_config = repo_root / "configs" / "ctrl_hh_harmless.py"
    code, out, _ = helps["runs"][f"infalign_jax.train --config {hh_config} --help"]
    assert code == 0 and f"config fields of {hh_config}" in out
    assert "  problem = 'hh'" in out and "  beta = 0.397" in out and "  hh.split = 'train'" in out
    custom = next(k for k in helps["runs"] if k.endswith("custom.py -h"))
    code, out, _ = helps["runs"][custom]
    assert code == 0
    listing = out.split("(name = default, then its description):\n\n", 1)[1].splitlines()
    assert listing == [
        f"{'  alpha = 1.5':<44}  the alpha knob",
        "",
        "  # Section two.",
        "  sub.gamma = (1, 2)",
    ]
    # Help wins over everything else on the line (nothing runs, no workdir is created).
    code, out, _ = helps["runs"]["infalign_jax.sft --workdir w --config.num_steps=3 --help"]
    assert code == 0 and "  num_steps = 400" in out


def test_help_needs_no_data_home_or_network(helps):
    """Run with HOME an empty directory and INFALIGN_HH_DIR=/nonexistent: nothing was read from or written to
    either (a CLI touching the data would have failed on the missing directory), and nothing appeared in the
    working directory. The real ``python -m`` entry point behaves as the in-process runs."""
    assert helps["home"] == [] and helps["cwd"] == ["custom.py"]
    real = helps["real"]
    assert real.returncode == 0 and real.stdout == helps["runs"]["infalign_jax.train --help"][1]


def test_help_requested_stops_at_double_dash():
    assert help_requested(["--config", "x.py", "-h"]) and help_requested(["--help"])
    assert not help_requested(["--config", "x.py", "--", "-h"]) and not help_requested(["--helper"])


def test_source_docs_trailing_notes_headings_and_multiline_values():
    source = textwrap.dedent(
        """
        def get_config():
            c = ConfigDict()
            c.a = 1  # trailing
            c.b = (
                1,
                2,
            )  # on the closing line

            # Heading of a paragraph.
            c.sub = ConfigDict()
            c.sub.x = "x"  # x's own
            # A note on y. More of the note.
            c.sub.y = 2
            c.sub.z = 3

            # Heading only.
            c.w = 4
            return c
        """
    )
    docs = source_docs(source)
    assert docs["a"] == ("trailing", "") and docs["b"] == ("on the closing line", "")
    assert docs["sub.x"] == ("x's own", "Heading of a paragraph.")
    assert docs["sub.y"] == ("A note on y", "Heading of a paragraph.")  # the note's first sentence
    assert docs["sub.z"] == ("", "Heading of a paragraph.")
    assert docs["w"] == ("", "Heading only.")  # a paragraph's heading is not the field's description


def test_config_docs_order_and_fields_set_outside_the_source():
    import ml_collections

    config = ml_collections.ConfigDict({"late": 0, "b": 2.5, "a": "s"})  # "late": set in no assignment
    fields = config_docs(config, "c.a = 1  # first\nc.b = 2  # second\n")
    assert [(f.name, f.default, f.description) for f in fields] == [
        ("a", "s", "first"),
        ("b", 2.5, "second"),
        ("late", 0, ""),
    ]
    assert format_fields(fields, width=10).splitlines() == [
        "  a = 's'   first",
        "  b = 2.5   second",
        "  late = 0",
    ]


def test_run_summary_layout():
    rows = [("KL", "0.3000"), ("win rate", "0.6000")]
    assert run_summary("title", rows, "/w (a.json)").splitlines() == [
        "title",
        "  KL        0.3000",
        "  win rate  0.6000",
        "  outputs: /w (a.json)",
    ]
    assert run_summary("title", rows, "/w", lines=["t  1"], already_complete=True).splitlines() == [
        "already complete: title; outputs in /w",
        "  KL        0.3000",
        "  win rate  0.6000",
        "  t  1",
    ]
