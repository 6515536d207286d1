"""Atomic writes: content lands whole, failures leave the old file/directory, permissions follow the umask."""

import os
import stat

import pytest

from infalign_jax.io_utils import atomic_directory, atomic_write_bytes, atomic_write_json


def test_atomic_write_replaces_and_uses_umask_permissions(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert path.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":2}'
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temp files left behind


def test_atomic_write_failure_keeps_old_content(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write_bytes(path, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(path, object())  # f.write fails mid-way
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_directory_success_and_failure(tmp_path):
    target = tmp_path / "data"
    with atomic_directory(target) as d:
        (d / "x").write_text("1")
    assert (target / "x").read_text() == "1"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~mask
    with pytest.raises(RuntimeError), atomic_directory(target) as d:
        (d / "x").write_text("2")
        raise RuntimeError("build failed")
    assert (target / "x").read_text() == "1"  # the earlier build survives a failed rebuild
    with atomic_directory(target) as d:
        (d / "y").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
