"""Byte-level BPE tokenizer trained on the real HH train split; AutoTokenizer loads the saved
tokenizer.json."""

import pytest

from infalign_jax.cli import UsageError, run_main
from infalign_jax.data.hh import build_hh, load_hh
from infalign_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, ROLE_TOKENS, load_tokenizer, train_bpe
from infalign_jax.tokenizer_train import main


@pytest.fixture(scope="module")
def data(hh_dir, tmp_path_factory):
    """The real HH file built once into a TFDS data dir."""
    out = tmp_path_factory.mktemp("hh") / "data"
    build_hh(hh_dir, out)
    return out


def cli(capsys, *args):
    """``(exit code, stderr)`` of the tokenizer_train CLI run with ``args``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(main, [str(a) for a in args])
    return e.value.code, capsys.readouterr().err


def test_hh_tokenizer_trains_saves_and_loads_with_auto_tokenizer(data, tmp_path):
    main(["--data-dir", str(data), "--out", str(tmp_path / "tok"), "--vocab-size", "1024"])
    tok = load_tokenizer(tmp_path / "tok")  # transformers.AutoTokenizer
    assert tok.is_fast
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    assert len(tok) == 1024
    assert tok.convert_tokens_to_ids(list(ROLE_TOKENS)) == [1022, 1023]
    backend = tok.backend_tokenizer
    for r in list(load_hh("eval", data))[:50]:  # held-out text round-trips exactly
        text = r["prompt"] + " " + r["chosen"]
        ids = tok(text)["input_ids"]
        assert ids[0] == BOS_ID and ids == backend.encode(text).ids
        assert ids.count(1023) == text.count(ROLE_TOKENS[1])
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_bad_tokenizer_inputs(tmp_path):
    with pytest.raises(UsageError, match="vocab_size"):
        train_bpe(["a b c"], vocab_size=100)
    with pytest.raises(UsageError, match="min_frequency must be in"):
        train_bpe(["a b c"], vocab_size=300, min_frequency=-1)  # was an OverflowError in tokenizers
    with pytest.raises(UsageError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    # A damaged tokenizer.json was a raw JSONDecodeError; a missing tokenizer_config.json loaded with
    # pad / bos ids None.
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    with pytest.raises(UsageError, match="no tokenizer_config.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(UsageError, match=f"cannot load the tokenizer in {tmp_path}"):
        load_tokenizer(tmp_path)


def test_out_holding_anything_else_is_never_touched(data, tmp_path, capsys):
    """--out is written only if absent or empty; --overwrite replaces only an earlier tokenizer."""
    base = ["--data-dir", data, "--vocab-size", 300]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    afile = tmp_path / "afile"
    afile.write_text("keep me too")
    for args, message in [
        (["--out", other], "already exists and is not empty"),
        (["--out", other, "--overwrite"], "not an earlier output"),
        (["--out", afile], "is not a directory"),
        (["--out", afile, "--overwrite"], "is not a directory"),
        (["--out", afile / "sub"], "afile exists and is not a directory"),
    ]:
        code, err = cli(capsys, *base, *args)
        assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert [p.name for p in other.iterdir()] == ["notes.txt"] and afile.read_text() == "keep me too"

    tok = tmp_path / "tok"
    assert cli(capsys, *base, "--out", tok) == (0, "")
    first = (tok / "tokenizer.json").read_text()
    code, err = cli(capsys, *base, "--out", tok, "--vocab-size", 400)
    assert code == 2 and "pass --overwrite" in err
    assert (tok / "tokenizer.json").read_text() == first
    assert cli(capsys, *base, "--out", tok, "--vocab-size", 400, "--overwrite") == (0, "")
    assert len(load_tokenizer(tok)) == 400
    # nothing left beside the outputs: no temporary or moved-aside directories
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "other", "tok"]


def test_bad_flags_are_one_line_exit_2(data, tmp_path, capsys):
    for args, message in [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--vocab-size", "many"], "--vocab-size: invalid int value"),
        (["--data-dir", data, "--min-frequency", "-1"], "min_frequency must be in [0, "),
    ]:
        code, err = cli(capsys, "--out", tmp_path / "tok", *args)
        assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "tok").exists()
