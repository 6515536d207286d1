"""python -m infalign_jax.sample: JSON / readable output on the llama fixture, exit 2 on bad arguments."""

import json

import numpy as np
import pytest

from infalign_jax import sample
from infalign_jax.cli import run_main

PROMPTS = ["Human: Hi! Assistant:", "Human: What is the capital of France? Assistant:"]


@pytest.fixture(scope="module")
def model_dir(repo_root):
    return str(repo_root / "tests/fixtures/models/llama")


def args(model_dir, *extra):
    out = ["--model", model_dir, "--n", "4", "--max-new-tokens", "16", "--temperature", "0.8"]
    for p in PROMPTS:
        out += ["--prompt", p]
    return out + list(extra)


def test_json_output(model_dir, capsys):
    assert sample.main(args(model_dir, "--json", "--seed", "3")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 4 and report["sampling"]["temperature"] == 0.8 and report["seed"] == 3
    assert [r["prompt"] for r in report["results"]] == PROMPTS
    for r in report["results"]:
        assert len(r["samples"]) == 4
        for s in r["samples"]:
            assert len(s["tokens"]) == s["length"] <= 16 and s["logprob"] < 0 and s["sample_logprob"] < 0
        assert len({tuple(s["tokens"]) for s in r["samples"]}) == 4
    assert sample.main(args(model_dir, "--json", "--seed", "3")) == 0
    assert json.loads(capsys.readouterr().out) == report, "same seed, different output"


def test_readable_output_matches_json(model_dir, capsys):
    sample.main(args(model_dir, "--json"))
    report = json.loads(capsys.readouterr().out)
    sample.main(args(model_dir))
    text = capsys.readouterr().out
    assert text.count("prompt: ") == 2 and text.count("len=") == 8
    first = report["results"][0]["samples"][0]
    assert f"logprob={first['logprob']:9.3f}" in text
    assert np.isfinite([s["logprob"] for r in report["results"] for s in r["samples"]]).all()


@pytest.mark.parametrize(
    "bad",
    [
        ["--n", "0"],
        ["--max-new-tokens", "0"],
        ["--top-p", "1.5"],
        ["--temperature", "-1"],
        ["--top-k", "-3"],
        ["--n", "two"],
        ["--model", "/nonexistent/model"],
        ["--bogus-flag"],
        ["--seed", str(2**64)],
    ],
)
def test_bad_arguments_exit_2(model_dir, bad, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(sample.main, args(model_dir, *bad))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_missing_required_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        run_main(sample.main, ["--prompt", "hi"])
    assert e.value.code == 2 and "--model" in capsys.readouterr().err
