"""Offline calibration table: sorted reference rewards [P, K] keyed by prompt id (paper Sec. 4, Alg. 1 step
1).

On-disk format (a directory, version 1)::

    <dir>/meta.json           {"format": "infalign_jax.calibration_table", "version": 1, "k": K,
                               "shards": ["shard-00000.npz", ...], "num_prompts": N, ...user meta...}
    <dir>/shard-00000.npz     prompt_id: int64 [n]      (unique across the table)
                              rewards:   float32 [n, K] (each row sorted ascending, all finite)

Shards are written atomically (temp file + rename) and ``meta.json`` is rewritten atomically after each
shard, so a
killed build loses at most the rows buffered since the last flush; :class:`CalibrationTableWriter` reopens an
existing
directory and :meth:`~CalibrationTableWriter.done_ids` tells the builder which prompts to skip (resumable
build).
A shard file not listed in ``meta.json`` (killed between the two renames) is ignored and overwritten.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infalign_jax.errors import UsageError
from infalign_jax.io_utils import (
    atomic_write_bytes,
    atomic_write_json,
    check_directory_path,
    ensure_writable_dir,
    read_npz,
)

FORMAT = "infalign_jax.calibration_table"
VERSION = 1


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise UsageError(f"{path} is not a calibration table (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{meta_path} is unreadable or not JSON ({e}); rebuild the table") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        meta = meta if isinstance(meta, dict) else {}
        raise UsageError(
            f"{meta_path}: unsupported calibration table format {meta.get('format')!r} "
            f"version {meta.get('version')!r}"
        )
    k, shards = meta.get("k"), meta.get("shards")
    names_ok = isinstance(shards, list) and all(isinstance(s, str) and Path(s).name == s for s in shards)
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1 and names_ok):
        raise UsageError(
            f"{meta_path}: damaged (needs 'k' >= 1 and a list of shard file names); rebuild the table"
        )
    return meta


class CalibrationTableWriter:
    """Appends (prompt_id, K rewards) rows to a table directory; resumes an existing one with the same K."""

    def __init__(
        self, path: str | os.PathLike, k: int, meta: dict[str, Any] | None = None, shard_size: int = 1024
    ):
        if k < 1:
            raise UsageError(f"calibration table needs K >= 1 reference samples per prompt, got K={k}")
        self.path = Path(path)
        self.k = int(k)
        self.shard_size = int(shard_size)
        self._buf_ids: list[np.ndarray] = []
        self._buf_rewards: list[np.ndarray] = []
        if (self.path / "meta.json").exists():
            self.meta = _read_meta(self.path)
            if self.meta["k"] != self.k:
                raise UsageError(
                    f"{self.path} holds K={self.meta['k']} rewards per prompt; cannot resume with K={k}"
                )
            self._done = set()
            for shard in self.meta["shards"]:
                z = read_npz(self.path / shard, ("prompt_id",), f"calibration table {self.path}: shard")
                self._done.update(int(i) for i in z["prompt_id"])
        else:
            check_directory_path(self.path, "calibration table path")
            ensure_writable_dir(self.path)
            self.meta = {
                "format": FORMAT,
                "version": VERSION,
                "k": self.k,
                "shards": [],
                "num_prompts": 0,
                **(meta or {}),
            }
            self._done = set()
            atomic_write_json(self.path / "meta.json", self.meta)

    def done_ids(self) -> set[int]:
        """Prompt ids already stored (flushed) or buffered."""
        return set(self._done)

    def add(self, prompt_ids, rewards_pk) -> None:
        """Buffers rows; validates shape, finiteness and uniqueness first (a bad batch adds nothing)."""
        ids = np.asarray(prompt_ids, np.int64).reshape(-1)
        rewards = np.asarray(rewards_pk, np.float32)
        if rewards.shape != (ids.shape[0], self.k):
            raise UsageError(f"expected rewards of shape [{ids.shape[0]}, {self.k}], got {rewards.shape}")
        if not np.isfinite(rewards).all():
            bad = np.argwhere(~np.isfinite(rewards))[0]
            raise UsageError(
                f"non-finite reference reward for prompt id {ids[bad[0]]} (sample {bad[1]}); "
                "nothing from this batch was stored"
            )
        if len(set(ids.tolist())) != ids.size or self._done.intersection(ids.tolist()):
            raise UsageError("duplicate prompt id(s) in calibration table batch")
        self._buf_ids.append(ids)
        self._buf_rewards.append(np.sort(rewards, axis=1))
        self._done.update(ids.tolist())
        if sum(b.size for b in self._buf_ids) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self._buf_ids:
            return
        ids = np.concatenate(self._buf_ids)
        rewards = np.concatenate(self._buf_rewards)
        name = f"shard-{len(self.meta['shards']):05d}.npz"
        buf = io.BytesIO()
        np.savez(buf, prompt_id=ids, rewards=rewards)
        atomic_write_bytes(self.path / name, buf.getvalue())
        self.meta["shards"].append(name)
        self.meta["num_prompts"] += int(ids.size)
        atomic_write_json(self.path / "meta.json", self.meta)
        self._buf_ids, self._buf_rewards = [], []

    def close(self) -> None:
        self.flush()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()


@dataclass(frozen=True)
class CalibrationTable:
    """A loaded table: ``prompt_ids`` [N] (sorted) and ``rewards_nk`` [N, K] (rows sorted), plus ``meta``."""

    prompt_ids: np.ndarray
    rewards_nk: np.ndarray
    meta: dict[str, Any]

    @property
    def k(self) -> int:
        return int(self.rewards_nk.shape[1])

    def lookup(self, prompt_ids) -> np.ndarray:
        """Sorted reference rewards [P, K] for the given prompt ids (UsageError if any id is missing)."""
        ids = np.asarray(prompt_ids, np.int64).reshape(-1)
        if len(self.prompt_ids) == 0 and len(ids):
            raise UsageError(f"prompt id {int(ids[0])} not in calibration table (the table is empty)")
        pos = np.searchsorted(self.prompt_ids, ids)
        pos = np.minimum(pos, len(self.prompt_ids) - 1)
        missing = self.prompt_ids[pos] != ids
        if missing.any():
            raise UsageError(
                f"prompt id {int(ids[missing][0])} not in calibration table ({len(self.prompt_ids)} prompts)"
            )
        return self.rewards_nk[pos]


def load_table(path: str | os.PathLike) -> CalibrationTable:
    path = Path(path)
    meta = _read_meta(path)
    ids, rewards = [np.zeros((0,), np.int64)], [np.zeros((0, meta["k"]), np.float32)]
    for shard in meta["shards"]:
        z = read_npz(path / shard, ("prompt_id", "rewards"), f"calibration table {path}: shard")
        if z["rewards"].ndim != 2 or z["rewards"].shape != (len(z["prompt_id"]), meta["k"]):
            raise UsageError(
                f"calibration table {path}: shard {shard} holds rewards of shape {z['rewards'].shape} for "
                f"{len(z['prompt_id'])} prompts, expected K={meta['k']} per prompt; rebuild the table"
            )
        ids.append(z["prompt_id"])
        rewards.append(z["rewards"])
    ids_n, rewards_nk = np.concatenate(ids), np.concatenate(rewards)
    order = np.argsort(ids_n, kind="stable")
    return CalibrationTable(ids_n[order], rewards_nk[order], meta)
