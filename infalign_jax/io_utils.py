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


def _first_nonfinite(obj: Any, where: str = "") -> str | None:
    """The key path (``a.b[2]``) of the first NaN / ±inf float in a JSON-like ``obj``, else None."""
    if isinstance(obj, float):
        return None if obj == obj and abs(obj) != float("inf") else (where or "the value")
    items = (
        obj.items() if isinstance(obj, Mapping) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    )
    for k, v in items:
        found = _first_nonfinite(v, f"{where}[{k}]" if isinstance(k, int) else f"{where}.{k}".lstrip("."))
        if found:
            return found
    return None


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Writes ``obj`` as JSON (atomically). NaN and ±inf are refused (``ValueError`` naming the file and the
    key; nothing written): JSON has no such numbers, so ``json.dumps``' default ``NaN`` made invalid files."""
    try:
        text = json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False)
    except ValueError as e:
        where = _first_nonfinite(obj)
        if where is None:
            raise
        raise ValueError(
            f"refusing to write {path}: {where} is not a finite number (JSON has no NaN/inf)"
        ) from e
    atomic_write_text(path, text + "\n")


def read_npz(path: str | os.PathLike, names: tuple[str, ...], what: str) -> dict[str, Any]:
    """The arrays ``names`` of the ``.npz`` file at ``path`` (no pickles). A missing, empty, truncated or
    corrupt file, one that is not a zip of arrays (e.g. a ``.npy``) or lacks one of ``names`` raises one
    :class:`~infalign_jax.errors.UsageError` starting ``"<what> <path> is missing or damaged"``: numpy raises
    EOFError, BadZipFile, zlib.error, ValueError, OSError or KeyError for these."""
    import zipfile
    import zlib

    import numpy as np

    from infalign_jax.errors import UsageError

    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy file loads as a bare array
            raise ValueError("it holds a single array, not an npz archive")
        with z:
            missing = [n for n in names if n not in z.files]
            if missing:
                raise KeyError(f"no array(s) {', '.join(missing)} (has {', '.join(z.files) or 'none'})")
            return {n: z[n] for n in names}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        why = f"{type(e).__name__}: {' '.join(str(e).split())}" if str(e) else type(e).__name__
        if isinstance(e, ValueError) and "pickle" in str(e):  # numpy's guess for a file of no known format
            why = "neither a zip archive nor a .npy array"
        arrays = " and ".join(repr(n) for n in names)
        raise UsageError(
            f"{what} {path} is missing or damaged, not an npz with arrays {arrays} ({why})"
        ) from None


def check_directory_path(path: str | os.PathLike, what: str = "directory") -> Path:
    """``path`` if it is a directory or could be created as one (nothing but directories at it and above it);
    otherwise one :class:`~infalign_jax.errors.UsageError` naming ``what`` and the blocking file. Creates
    nothing: for checks before slow work whose outputs come later."""
    from infalign_jax.errors import UsageError

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
    :class:`~infalign_jax.errors.UsageError` naming ``path``.
    """
    from infalign_jax.errors import UsageError

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
    """Raises :class:`~infalign_jax.errors.UsageError` if :func:`atomic_directory` must not replace
    ``path``."""
    from infalign_jax.errors import UsageError

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
    files an earlier run wrote"). Otherwise :class:`UsageError` is raised before the block
    runs, and again (nothing replaced) if such a ``path`` appeared while it ran. The replaced entry is moved
    aside first and deleted only after the new directory is in place. This guards against a failed or
    killed process, not a power loss: files written into the temporary directory are not fsynced here.
    """
    from infalign_jax.errors import UsageError

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


def import_transformers():
    """``import transformers`` without its ``PyTorch was not found. Models won't be available...`` banner;
    returns the module.

    This package uses transformers for tokenizers and configurations only (its models are JAX), so the banner
    is noise. It is an "advisory" warning that transformers prints while its ``__init__`` runs, and
    ``TRANSFORMERS_NO_ADVISORY_WARNINGS`` (which transformers honours) is set for that first import only:
    every later warning, advisory or not, still shows. Every module of this package that imports transformers
    calls this first.
    """
    import sys

    if "transformers" in sys.modules:
        return sys.modules["transformers"]
    key = "TRANSFORMERS_NO_ADVISORY_WARNINGS"
    saved = os.environ.get(key)
    os.environ[key] = "1"
    try:
        import transformers
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved
    return transformers
