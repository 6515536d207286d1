"""Crash-safe file output: write to a temporary sibling, then atomically rename into place.

A failed or interrupted write never corrupts or removes what was there before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(path: Path) -> None:
    """Makes the entries of directory ``path`` (e.g. a rename into it) durable; a no-op where directories
    cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temp file in the same directory + ``os.replace``."""
    atomic_write_files({path: data})


def atomic_write_files(files: Mapping[str | os.PathLike, bytes]) -> None:
    """Writes several files all-or-nothing as far as a filesystem allows: every file goes to a temp file
    beside its target first (fsynced); only when all are written are they renamed into place. A failure while
    writing (a read-only directory, a full disk) removes the temp files and leaves every target untouched;
    its OSError names the target (``filename``), not the temp file."""
    staged: list[tuple[str, Path]] = []
    path = None
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((tmp, path))
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
        for parent in {target.parent for _, target in staged}:
            _fsync_directory(parent)  # the renames themselves survive a power loss
    except BaseException as e:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(e, OSError) and path is not None:
            e.filename = str(path)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def check_directory_path(path: str | os.PathLike, what: str = "directory") -> Path:
    """``path`` if it is a directory or could be created as one (nothing but directories at it and above it);
    otherwise one :class:`~infalign_jax.cli.UsageError` naming ``what`` and the blocking file. Creates
    nothing: for checks before slow work whose outputs come later."""
    from infalign_jax.cli import UsageError

    path = Path(path)
    for p in (path, *path.parents):
        if p.is_dir():
            break
        if p.exists() or p.is_symlink():
            blocker = "it exists" if p == path else f"{p} exists"
            raise UsageError(f"{what} {path} cannot be a directory: {blocker} and is not a directory")
    return path


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Creates directory ``path`` (and its parents) if needed and checks that entries can be created in it.

    For CLIs, before long work: a file in the way, a missing permission or a read-only filesystem raises one
    :class:`~infalign_jax.cli.UsageError` naming ``path``.
    """
    from infalign_jax.cli import UsageError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".probe.", dir=path))
    except OSError as e:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is not a directory" if blocker is not None else (e.strerror or str(e))
        raise UsageError(f"cannot write to directory {path}: {why}") from None
    return path


def _check_replaceable(path: Path, replace: bool | Callable[[Path], bool]) -> None:
    """Raises :class:`~infalign_jax.cli.UsageError` if :func:`atomic_directory` must not replace ``path``."""
    from infalign_jax.cli import UsageError

    if not os.path.lexists(path) or replace is True:
        return
    if path.is_symlink() or not path.is_dir():
        kind = "a symbolic link" if path.is_symlink() else "not a directory"
        raise UsageError(f"{path} exists and is {kind}; refusing to replace it")
    if not any(path.iterdir()):
        return  # an empty directory: nothing to lose
    if replace is False:
        raise UsageError(f"{path} already exists and is not empty; refusing to replace it")
    if not replace(path):
        raise UsageError(
            f"{path} already exists and holds files that are not an earlier output of this command; "
            "refusing to replace it (move it away or choose another path)"
        )


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike, *, replace: bool | Callable[[Path], bool] = False
) -> Iterator[Path]:
    """Yields a temporary directory that replaces ``path`` only if the block finishes without error.

    The temporary directory is a sibling of ``path`` (same filesystem, so the final rename is atomic). An
    existing ``path`` is never deleted silently: an empty directory is replaced; anything else only with
    ``replace=True``, or if it is a directory for which ``replace(path)`` is true (e.g. "holds only the
    files an earlier run wrote"). Otherwise :class:`~infalign_jax.cli.UsageError` is raised before the block
    runs, and again (nothing replaced) if such a ``path`` appeared while it ran. The replaced entry is moved
    aside first and deleted only after the new directory is in place. This guards against a failed or
    killed process, not a power loss: files written into the temporary directory are not fsynced here.
    """
    from infalign_jax.cli import UsageError

    path = Path(os.path.abspath(path))  # '.' or 'a/..' has no name, and its parent would be itself
    if path == Path.cwd() or path in Path.cwd().parents:
        raise UsageError(f"{path} is the current directory (or holds it): give a new or empty subdirectory")
    _check_replaceable(path, replace)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
    try:
        yield tmp
        _check_replaceable(path, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.lexists(path):
        # Moved into a fresh private directory: works for a file, a link or a directory, never collides.
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        os.replace(path, old / path.name)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
