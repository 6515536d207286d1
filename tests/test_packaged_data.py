"""The HH-RLHF file shipped as package data: the default input everywhere, overridable, checksum-checked.

A clone or an installed package has no ``../shared``; ``infalign_jax/data/hh_rlhf`` (LICENSE, README.md,
SHA256SUMS, harmless-base/test.jsonl.gz) is the default, ``$INFALIGN_HH_DIR`` / ``manual_dir`` override it.
"""

import gzip
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest

import infalign_jax
from infalign_jax.cli import UsageError, run_main
from infalign_jax.commands import hh_data
from infalign_jax.data import hh
from infalign_jax.data.hh import PACKAGED_HH_DIR, build_hh, load_hh, resolve_manual_dir

# sha256 of anthropics/hh-rlhf (commit 354e5c3) harmless-base/test.jsonl.gz, as published upstream.
UPSTREAM_SHA256 = "ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03"
DATA_FILE = "harmless-base/test.jsonl.gz"


def test_packaged_copy_is_the_default_and_matches_its_checksum(monkeypatch):
    monkeypatch.delenv("INFALIGN_HH_DIR", raising=False)
    assert resolve_manual_dir() == PACKAGED_HH_DIR
    assert PACKAGED_HH_DIR == Path(infalign_jax.__file__).resolve().parent / "data" / "hh_rlhf"
    for name in ("LICENSE", "README.md", "SHA256SUMS", DATA_FILE):
        assert (PACKAGED_HH_DIR / name).is_file(), name
    assert "MIT License" in (PACKAGED_HH_DIR / "LICENSE").read_text()
    assert "Content warning" in (PACKAGED_HH_DIR / "README.md").read_text()
    sums = (PACKAGED_HH_DIR / "SHA256SUMS").read_text().split()
    assert sums == [UPSTREAM_SHA256, DATA_FILE]
    assert hashlib.sha256((PACKAGED_HH_DIR / DATA_FILE).read_bytes()).hexdigest() == UPSTREAM_SHA256
    with gzip.open(PACKAGED_HH_DIR / DATA_FILE, "rt", encoding="utf-8") as f:
        assert sum(1 for _ in f) == 2312


def test_manual_dir_beats_the_environment_which_beats_the_packaged_copy(monkeypatch):
    monkeypatch.setenv("INFALIGN_HH_DIR", "/data/env")
    assert resolve_manual_dir() == Path("/data/env")
    assert resolve_manual_dir("/data/arg") == Path("/data/arg")
    monkeypatch.setenv("INFALIGN_HH_DIR", "")  # set but empty: as if unset
    assert resolve_manual_dir() == PACKAGED_HH_DIR


def test_no_lookup_beside_the_checkout_or_the_working_directory(monkeypatch, tmp_path):
    """The old default looked for ../shared/data/hh-rlhf beside the repo and beside the working directory."""
    (tmp_path / "shared" / "data" / "hh-rlhf" / "harmless-base").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("INFALIGN_HH_DIR", raising=False)
    assert resolve_manual_dir() == PACKAGED_HH_DIR


def _write_pairs(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i in range(n):
            q = f"\n\nHuman: q{i}\n\nAssistant:"
            f.write(json.dumps({"chosen": f"{q} a", "rejected": f"{q} b"}) + "\n")


def _copy_packaged(dst: Path) -> Path:
    shutil.copytree(PACKAGED_HH_DIR, dst)
    return dst


def test_damaged_file_is_one_usage_error_and_nothing_is_written(tmp_path, capsys):
    src = _copy_packaged(tmp_path / "hh")
    data = src / DATA_FILE
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte
    data.write_bytes(bytes(raw))
    with pytest.raises(UsageError, match=r"test\.jsonl\.gz: sha256 [0-9a-f]{64} does not match .*SHA256SUMS"):
        build_hh(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as e:
        run_main(hh_data.main, ["--manual-dir", str(src), "--data-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert UPSTREAM_SHA256 in err
    assert not (tmp_path / "out").exists()


def test_files_not_listed_in_sha256sums_and_dirs_without_one_are_not_checked(tmp_path):
    """A user's copy with another subset or with no SHA256SUMS is accepted; listed files are still checked."""
    src = _copy_packaged(tmp_path / "hh")
    _write_pairs(src / "helpful-base" / "test.jsonl.gz", 1)
    hh.input_files(src, ["helpful-base"])  # not listed: not checked
    (src / DATA_FILE).write_bytes(gzip.compress(b""))
    with pytest.raises(UsageError, match="does not match"):
        hh.input_files(src, ["harmless-base", "helpful-base"])
    (src / "SHA256SUMS").unlink()
    assert hh.input_files(src, ["harmless-base"]) == [src / DATA_FILE]


def test_build_leaves_no_temporary_directory_behind(tmp_path, monkeypatch):
    """TFDS made an empty ``tmp*tfds`` directory in the system temp dir per builder and never removed it."""
    scratch = tmp_path / "systmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    src = tmp_path / "hh"
    _write_pairs(src / "harmless-base" / "test.jsonl.gz", 20)
    path = build_hh(src, tmp_path / "out")
    assert len(load_hh("train", tmp_path / "out")) + len(load_hh("eval", tmp_path / "out")) == 20
    assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in path.parent.iterdir()) == ["1.0.0"]
