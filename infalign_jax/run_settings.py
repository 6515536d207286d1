"""A run's recorded settings vs the settings it is resumed with: one flattening and one message format for
every trainer (CTRL, SFT, the main job). Resuming a workdir with other settings would report its old results
under the new ones, so each trainer refuses it, naming what differs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from infalign_jax.cli import UsageError

MISSING = "(none)"


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested dicts as one dict of dotted keys: ``{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}``; any other
    value (lists included) is a leaf."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def diffs(old: dict, new: dict, ignore: Iterable[str] = ()) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs between two flat dicts (sorted by key; a key
    absent on one side shows as ``(none)``), leaving out the keys in ``ignore`` and the keys under them."""
    ignore = tuple(ignore)
    skip = lambda k: any(k == i or k.startswith(f"{i}.") for i in ignore)
    return [
        f"{k}: {old.get(k, MISSING)!r} -> {new.get(k, MISSING)!r}"
        for k in sorted(old.keys() | new.keys())
        if not skip(k) and old.get(k, MISSING) != new.get(k, MISSING)
    ]


def summary(changes: list[str], n: int = 4) -> str:
    """The first ``n`` differences, ``"; "``-joined, and how many more there are."""
    more = f" (and {len(changes) - n} more)" if len(changes) > n else ""
    return "; ".join(changes[:n]) + more


def read_settings(path: Path) -> dict:
    """The JSON object recorded at ``path``; a damaged record is a UsageError naming it."""
    try:
        settings = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if not isinstance(settings, dict):
        raise UsageError(f"cannot read {path}: not a JSON object")
    return settings
