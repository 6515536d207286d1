"""HH-RLHF parsing, the TFDS builder, bad-input errors and the CLI."""

import gzip
import json

import pytest

from infalign_jax.cli import UsageError, run_main
from infalign_jax.commands import hh_data
from infalign_jax.data import hh
from infalign_jax.data.hh import (
    build_hh,
    build_or_load,
    dialogue_turns,
    iter_pairs,
    load_hh,
    split_dialogue,
    split_pair,
    turn_spans,
)

MULTI = "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: how are you?\n\nAssistant:  fine, thanks. "


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for ln in lines:
            f.write((ln if isinstance(ln, str) else json.dumps(ln)) + "\n")


def _pair(q, a, b):
    return {"chosen": f"\n\nHuman: {q}\n\nAssistant: {a}", "rejected": f"\n\nHuman: {q}\n\nAssistant: {b}"}


def test_split_dialogue_single_and_multi_turn():
    assert split_dialogue("\n\nHuman: q?\n\nAssistant: yes.") == ("\n\nHuman: q?\n\nAssistant:", "yes.")
    prompt, reply = split_dialogue(MULTI)
    assert prompt == "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: how are you?\n\nAssistant:"
    assert reply == "fine, thanks."
    with pytest.raises(UsageError, match="no '"):
        split_dialogue("\n\nHuman: only a question")


def test_dialogue_turns_multi_turn():
    assert dialogue_turns(MULTI) == [
        ("Human", "hi"),
        ("Assistant", "hello!"),
        ("Human", "how are you?"),
        ("Assistant", "fine, thanks."),
    ]


def test_turn_spans_exclude_every_marker_even_a_repeated_assistant_one():
    text = "\n\nHuman: q\n\nAssistant: a\n\nAssistant: b\n\nHuman: c"
    spans = turn_spans(text)
    assert [(role, text[i:j]) for role, i, j in spans] == [
        ("Human", " q"),
        ("Assistant", " a"),
        ("Assistant", " b"),
        ("Human", " c"),
    ]
    assert dialogue_turns(text) == [("Human", "q"), ("Assistant", "a"), ("Assistant", "b"), ("Human", "c")]


def test_split_pair_shared_prompt_and_embedded_assistant_turn():
    p = "\n\nHuman: a\n\nAssistant:"
    assert split_pair(p + " x", p + " y") == (p, "x", "y")
    # A reply that itself goes on with more turns (5 such pairs exist in the real file): the shorter prefix is
    # shared.
    long = p + " x\n\nHuman: more\n\nAssistant: z"
    assert split_pair(long, p + " y") == (p, "x\n\nHuman: more\n\nAssistant: z", "y")
    assert split_pair(p + " y", long) == (p, "y", "x\n\nHuman: more\n\nAssistant: z")
    with pytest.raises(UsageError, match="do not share a prompt"):
        split_pair("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: b\n\nAssistant: x")


def test_prompt_split_is_stable_and_roughly_ten_percent():
    splits = [hh.prompt_split(f"prompt {i}") for i in range(4000)]
    assert splits == [hh.prompt_split(f"prompt {i}") for i in range(4000)]
    assert 0.08 < splits.count("eval") / 4000 < 0.12


@pytest.mark.parametrize(
    "bad, reason, message",
    [
        ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": ', "malformed_json", "malformed JSON"),
        ({"chosen": "\n\nHuman: a\n\nAssistant: b"}, "missing_key", "missing or non-string key.*rejected"),
        (
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: b"},
            "prompt_mismatch",
            "chosen and rejected do not share a prompt",
        ),
    ],
)
def test_bad_line_error_names_file_and_line_and_skip_counts(tmp_path, bad, reason, message):
    src = tmp_path / "hh"
    _write(src / "harmless-base" / "train.jsonl.gz", [_pair("q1", "a", "b"), _pair("q2", "c", "d"), bad])
    with pytest.raises(UsageError, match=rf"harmless-base/train\.jsonl\.gz:3: {message}"):
        build_hh(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written, not even the empty directories
    path = build_hh(src, tmp_path / "out", skip_bad=True, subsets=None)
    report = json.loads((path / "parse_report.json").read_text())
    assert report["skipped"] == {reason: 1} and report["subsets"] == ["harmless-base"]  # 'all' found these
    assert sum(report["kept"].values()) == 2
    assert len(load_hh("train", tmp_path / "out")) + len(load_hh("eval", tmp_path / "out")) == 2


def test_cli_exit_2_and_failed_build_keeps_previous(tmp_path, capsys):
    src = tmp_path / "hh"
    _write(src / "harmless-base" / "test.jsonl.gz", [_pair(f"q{i}", "good", "bad") for i in range(30)])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        run_main(hh_data.main, ["--manual-dir", str(src), "--data-dir", str(out)])
    assert e.value.code == 0
    before = sorted(r["id"] for s in ("train", "eval") for r in load_hh(s, out))
    assert before == list(range(30))
    # The same build again: one "already complete:" line (counts and place), exit 0, nothing rebuilt.
    built = capsys.readouterr().out.splitlines()
    built = built[next(i for i, line in enumerate(built) if line.startswith("HH-RLHF pairs:")) :]
    files = lambda: {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    written = files()
    with pytest.raises(SystemExit) as e:
        run_main(hh_data.main, ["--manual-dir", str(src), "--data-dir", str(out)])
    again = capsys.readouterr().out.splitlines()
    assert e.value.code == 0 and files() == written
    dataset = out / "hh_rlhf" / "1.0.0"
    n_train, n_eval = len(load_hh("train", out)), len(load_hh("eval", out))
    assert built[0] == f"HH-RLHF pairs: train={n_train} eval={n_eval} skipped=0"
    assert built[-1] == f"  outputs: {dataset}"
    assert again[0] == f"already complete: {built[0]}; outputs in {dataset}" and again[1:] == built[1:-1]
    # Now the input gains a bad line: the CLI fails with exit 2 and the earlier build is untouched.
    _write(src / "harmless-base" / "test.jsonl.gz", [_pair("x", "y", "z"), "not json"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(hh_data.main, ["--manual-dir", str(src), "--data-dir", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "test.jsonl.gz:2: malformed JSON" in err
    assert sorted(r["id"] for s in ("train", "eval") for r in load_hh(s, out)) == before
    with pytest.raises(SystemExit) as e:
        run_main(hh_data.main, ["--manual-dir", str(src), "--data-dir", str(out), "--skip-bad"])
    assert e.value.code == 0
    assert "skipped=1" in capsys.readouterr().out


def test_missing_inputs_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        build_hh(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="harmless-base"):
        build_hh(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(UsageError, match="no HH dataset"):
        load_hh("train", tmp_path / "out")
    with pytest.raises(UsageError, match="unknown split"):
        load_hh("test", tmp_path / "out")


def test_real_file_builds_all_pairs_with_disjoint_splits(hh_dir, tmp_path):
    """The packaged harmless-base test file (or $INFALIGN_HH_DIR's): every pair kept, disjoint splits."""
    build_hh(hh_dir, tmp_path)
    train, evl = load_hh("train", tmp_path), load_hh("eval", tmp_path)
    assert len(train) + len(evl) == 2312
    assert 0.07 < len(evl) / 2312 < 0.13
    recs = list(train) + list(evl)
    assert sorted(r["id"] for r in recs) == list(range(2312))
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evl}
    for r in recs:
        assert r["prompt"].startswith("\n\nHuman:") and r["prompt"].endswith("\n\nAssistant:")
        assert isinstance(r["chosen"], str) and isinstance(r["rejected"], str)
    # Spot-check one record against the raw line it came from.
    raw = gzip.open(hh_dir / "harmless-base" / "test.jsonl.gz", "rt").read().splitlines()
    r = next(r for r in recs if r["id"] == 0)
    line = json.loads(raw[0])
    assert r["prompt"] + " " + r["chosen"] == line["chosen"]
    assert r["prompt"] + " " + r["rejected"] == line["rejected"]


def _small_build(tmp_path, n=30):
    """A 30-pair input under ``tmp_path/hh`` built into ``tmp_path/out``; returns (input dir, output dir)."""
    src, out = tmp_path / "hh", tmp_path / "out"
    _write(src / "harmless-base" / "test.jsonl.gz", [_pair(f"q{i}", "good", "bad") for i in range(n)])
    build_hh(src, out)
    return src, out


def test_build_or_load_accepts_the_dataset_directory_itself(tmp_path):
    src, out = _small_build(tmp_path)
    ds = out / "hh_rlhf" / "1.0.0"
    before = sorted(p.name for p in ds.iterdir())
    n = len(load_hh("train", out))
    assert len(build_or_load("train", ds, src)) == n
    assert sorted(p.name for p in ds.iterdir()) == before  # no nested hh_rlhf/1.0.0 copy built inside it
    with pytest.raises(UsageError, match="is itself a built HH dataset"):
        build_hh(src, ds)
    assert sorted(p.name for p in ds.iterdir()) == before


def test_build_never_replaces_unrelated_files(tmp_path):
    src, out = _small_build(tmp_path)
    ds = out / "hh_rlhf" / "1.0.0"
    (ds / "my_notes.txt").write_text("keep")  # the directory is no longer just an earlier build
    before = sorted(p.name for p in ds.iterdir())
    with pytest.raises(UsageError, match="not an earlier output"):
        build_hh(src, out)
    assert sorted(p.name for p in ds.iterdir()) == before and (ds / "my_notes.txt").read_text() == "keep"
    assert sorted(p.name for p in (out / "hh_rlhf").iterdir()) == ["1.0.0"]  # no temporary directory left


def test_cli_bad_flags_and_unusable_data_dir_are_one_line_exit_2(tmp_path, capsys):
    src = tmp_path / "hh"
    _write(src / "harmless-base" / "test.jsonl.gz", [_pair("q", "good", "bad")])
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for args, message in [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--eval-percent", "ten"], "--eval-percent: invalid int value"),
        (["--data-dir", str(afile)], "afile is not a directory"),
        (["--data-dir", str(afile / "sub")], "afile is not a directory"),
    ]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            run_main(hh_data.main, ["--manual-dir", str(src), *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert message in err
    assert afile.read_text() == "keep"


def test_line_separators_inside_json_strings_do_not_split_lines(tmp_path):
    """JSON allows U+2028/U+2029/U+0085 and \\x1c-\\x1e raw inside strings; str.splitlines() broke a valid
    line there (a 'malformed JSON' error, or with --skip-bad dropped pairs and shifted ids)."""
    path = tmp_path / "hh" / "harmless-base" / "train.jsonl.gz"
    odd = "a\u2028b\u2029c\x85d\x1ce"
    rows = [_pair("q1", "a", "b"), _pair(odd, "c", "d"), _pair("q3", "e", "f")]
    _write(path, [json.dumps(r, ensure_ascii=False) for r in rows])  # the odd characters stay raw
    raw = gzip.open(path, "rt", encoding="utf-8").read()
    assert raw.count("\n") == 3 and "\u2028" in raw and len(raw.splitlines()) > 3
    pairs = list(iter_pairs([path]))
    assert [p[0] for p in pairs] == [0, 1, 2]  # ids are the lines' positions
    assert pairs[1][1] == f"\n\nHuman: {odd}\n\nAssistant:"


def test_damaged_dataset_shard_is_one_usage_error(tmp_path):
    """array_record opens shards lazily: a truncated one was a RuntimeError traceback at the first read
    (e.g. inside tokenizer_train or SFT); load_hh now reads the last record and names the dataset."""
    _, out = _small_build(tmp_path)
    assert len(load_hh("train", out)) > 0
    shard = next(out.rglob("*train.array_record*"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(UsageError, match=r"cannot be read \(.*\); rebuild it with"):
        load_hh("train", out)
