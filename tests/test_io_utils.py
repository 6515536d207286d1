"""Atomic writes: content lands whole, failures leave the old file/directory, permissions follow the umask,
nothing unrelated is ever replaced. Also the shared CLI plumbing (``infalign_jax.cli``): config-file errors
and stray arguments are one :class:`UsageError`."""

import os
import stat

import pytest

from infalign_jax.cli import UsageError, load_config_file, parse_config_flags
from infalign_jax.io_utils import atomic_directory, atomic_write_bytes, atomic_write_json, ensure_writable_dir


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
    with pytest.raises(RuntimeError), atomic_directory(target, replace=True) as d:
        (d / "x").write_text("2")
        raise RuntimeError("build failed")
    assert (target / "x").read_text() == "1"  # the earlier build survives a failed rebuild
    with atomic_directory(target, replace=True) as d:
        (d / "y").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_atomic_directory_never_replaces_unrelated_content(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "precious").write_text("keep")
    afile = tmp_path / "afile"
    afile.write_text("keep too")
    ran = []
    for path, kw, message in [
        (target, {}, "already exists and is not empty"),
        (target, {"replace": lambda p: (p / "mine").exists()}, "not an earlier output"),
        (afile, {}, "is not a directory"),
        (afile, {"replace": lambda p: True}, "is not a directory"),
    ]:
        with pytest.raises(UsageError, match=message), atomic_directory(path, **kw):
            ran.append(path)  # refused before the block runs
    assert not ran and (target / "precious").read_text() == "keep" and afile.read_text() == "keep too"
    # an entry that appears while the block runs is not replaced either
    late = tmp_path / "late"
    with pytest.raises(UsageError, match="not empty"), atomic_directory(late) as d:
        (d / "new").write_text("new")
        late.mkdir()
        (late / "theirs").write_text("theirs")
    assert [p.name for p in late.iterdir()] == ["theirs"]
    # what the predicate accepts is replaced; an empty directory always is
    with atomic_directory(target, replace=lambda p: (p / "precious").exists()) as d:
        (d / "new").write_text("new")
    (tmp_path / "empty").mkdir()
    with atomic_directory(tmp_path / "empty") as d:
        (d / "new").write_text("new")
    # replace=True may replace a file: no hidden ".afile.old.*" left behind
    with atomic_directory(afile, replace=True) as d:
        (d / "new").write_text("new")
    for path in (target, tmp_path / "empty", afile):
        assert [p.name for p in path.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "empty", "late", "out"]


def test_ensure_writable_dir(tmp_path):
    assert ensure_writable_dir(tmp_path / "a" / "b").is_dir()
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == []  # the write probe is removed
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match=r"cannot write to directory .*f/sub: .*f is not a directory"):
        ensure_writable_dir(tmp_path / "f" / "sub")
    assert (tmp_path / "f").read_text() == "x"


CONFIG_ERRORS = [
    ("def get_config(:\n", "failed to load: SyntaxError: invalid syntax"),
    ("import nosuchmodule_xyz\n", "failed to load: ModuleNotFoundError: No module named 'nosuchmodule_xyz'"),
    ("def get_config():\n    raise RuntimeError('boom')\n", r"get_config\(\) failed: RuntimeError: boom"),
    ("x = 1\n", r"defines no get_config\(\) function"),
    ("def get_config():\n    return {'a': 1}\n", r"get_config\(\) must return an ml_collections.ConfigDict"),
]


@pytest.mark.parametrize("source, message", CONFIG_ERRORS)
def test_broken_config_file_is_one_usage_error_naming_it(tmp_path, source, message):
    path = tmp_path / "cfg.py"
    path.write_text(source)
    with pytest.raises(UsageError, match=rf"config file {path}:? {message}"):
        load_config_file(path)
    with pytest.raises(UsageError, match=rf"config file {path}:? {message}"):  # what the CLIs see
        parse_config_flags(["--config", str(path)], prog="prog", example="c.py")


def test_config_flags_reject_stray_arguments(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(
        "import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict({'a': 1})\n"
    )
    config, _ = parse_config_flags([f"--config={path}", "--config.a=2"], prog="prog", example="c.py")
    assert config.a == 2
    with pytest.raises(UsageError, match="unexpected argument.*: extra"):
        parse_config_flags(["--config", str(path), "extra"], prog="prog", example="c.py")
    with pytest.raises(UsageError, match="unexpected argument.*: extra"):
        parse_config_flags(["extra", "--config", str(path), "--config.a=3"], prog="prog", example="c.py")


def test_config_flags_errors_from_flagfiles_and_earlier_configs_are_one_usage_error(tmp_path):
    """Only the last --config was pre-loaded for a clean error: a flagfile or an earlier broken --config was
    a raw absl / ml_collections traceback (exit 1)."""
    broken, good = tmp_path / "broken.py", tmp_path / "good.py"
    broken.write_text("x = (\n")
    good.write_text(
        "import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict({'a': 1})\n"
    )
    flagfile = tmp_path / "ff.txt"
    flagfile.write_text(f"--config={broken}\n")
    for argv in (
        ["--config", str(good), f"--flagfile={tmp_path / 'missing.txt'}"],
        [f"--flagfile={flagfile}"],
        ["--config", str(broken), "--config", str(good)],
    ):
        with pytest.raises(UsageError, match="bad arguments or config: "):
            parse_config_flags(argv, prog="prog", example="c.py")


def test_atomic_write_files_is_all_or_nothing(tmp_path):
    from infalign_jax.io_utils import atomic_write_files

    keep = tmp_path / "keep.npz"
    keep.write_bytes(b"OLD")
    blocked = tmp_path / "afile"
    blocked.write_bytes(b"x")
    with pytest.raises(OSError) as e:  # the 2nd output cannot be written: the 1st must stay as it was
        atomic_write_files({keep: b"NEW", blocked / "out.png": b"PNG"})
    assert keep.read_bytes() == b"OLD" and e.value.filename == str(blocked / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "keep.npz"]  # no temp files left
    atomic_write_files({keep: b"NEW", tmp_path / "sub" / "b.png": b"PNG"})
    assert keep.read_bytes() == b"NEW" and (tmp_path / "sub" / "b.png").read_bytes() == b"PNG"


def test_atomic_directory_refuses_the_current_directory(tmp_path, monkeypatch):
    """`--out .` was accepted, worked, then failed ('. already exists and is not empty': its temp directory
    was created inside it); replacing the current directory is refused up front now."""
    monkeypatch.chdir(tmp_path)
    for path in (".", "sub/..", str(tmp_path)):
        with pytest.raises(UsageError, match="is the current directory"):
            with atomic_directory(path):
                pass
    assert list(tmp_path.iterdir()) == []
