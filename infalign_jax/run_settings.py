"""A run's recorded settings vs the settings it is resumed with: one flattening and one message format for
every trainer (CTRL, SFT, the main job). Resuming a workdir with other settings would report its old results
under the new ones, so each trainer refuses it, naming what differs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from infalign_jax.errors import UsageError

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
        if not skip(k) and not _same(old.get(k, MISSING), new.get(k, MISSING))
    ]


def _same(a, b) -> bool:
    """``a == b``, except that NaN equals NaN (also inside lists): a NaN setting recorded by an earlier run
    would otherwise never match itself (the rerun was refused as ``optim.lr: nan -> nan``)."""
    if a == b:
        return True
    try:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    except (TypeError, ValueError):
        return False


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


# ------------------------------------------------------------------------------------ the workdir's record

RECORD = "settings.json"


def recorded(workdir: Path, name: str = RECORD) -> dict | None:
    """The settings recorded in ``workdir/name`` (None: no record; a damaged one is a UsageError)."""
    path = Path(workdir) / name
    return read_settings(path) if path.is_file() else None


def record(workdir: Path, settings: dict, name: str = RECORD) -> None:
    """Records ``settings`` in ``workdir/name`` (atomically; rewritten only when they differ)."""
    from infalign_jax.io_utils import atomic_write_json

    if recorded(workdir, name) != settings:
        atomic_write_json(Path(workdir) / name, settings)


def check_resumable(
    old: dict,
    new: dict,
    *,
    where: str,
    resumable: Iterable[str] = (),
    extendable: bool = False,
    length_key: str = "num_steps",
    length_note: str = "",
    hint: str = "use another workdir",
) -> None:
    """The one resume rule of every trainer: UsageError unless the run recorded as ``old`` (nested or
    flat settings) may be continued with ``new``.

    Every setting outside ``resumable`` (and the keys under them) must be equal: resuming with another one
    would report the old run's policy under the new settings. The run length ``length_key`` may change only
    when ``extendable`` (a learning rate that does not decay over the run: otherwise a 200-step run
    continued to 400 steps is neither, yet would be reported as the latter); ``length_note`` says why not.
    ``where`` names the run (``"W holds a run ..."``), ``hint`` what to do instead."""
    old, new = flatten(old), flatten(new)
    resumable = tuple(resumable)
    if changed := diffs(old, new, ignore=resumable):
        more = f" (a resumed run may change only {', '.join(resumable)})" if resumable else ""
        raise UsageError(
            f"{where} holds a run with other settings ({summary(changed)}); resuming it would mix them — "
            f"{hint}{more}"
        )
    was, now = old.get(length_key, MISSING), new.get(length_key, MISSING)
    if was != now and not extendable:
        raise UsageError(
            f"{where} holds a run of {length_key} {was}{length_note}, so resuming it with {length_key} {now} "
            f"would not give a {now}-step run — {hint}"
        )
