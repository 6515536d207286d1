"""Up-front checks of numeric config values: one :class:`~infalign_jax.errors.UsageError` naming the field.

Every CLI validates its config before any work (nothing loaded, trained or written): a NaN learning rate used
to fail at step 2 after a checkpoint was saved, ``beta=inf`` or a NaN scale ran to a traceback, and a size
that cannot fit in memory ran for minutes first. :func:`number` is the one check of "a finite number / an
integer in a range"; :func:`numbers` applies it to many dotted config fields; :func:`check_array_bytes`
refuses sizes whose largest arrays exceed :data:`MAX_ARRAY_BYTES`.
"""

from __future__ import annotations

import math
import numbers as _numbers
from collections.abc import Iterable
from typing import Any

from infalign_jax.errors import UsageError

# One array of the step larger than this (estimated from the config) is refused before any work: 4 GiB is
# ~1e9 float32 elements, far beyond every config of this package (the largest, HH CTRL, is ~1e6 per array).
MAX_ARRAY_BYTES = 4 << 30


def _bound(op: str, limit: float) -> str:
    return f"{op} {limit:g}" if isinstance(limit, float) else f"{op} {limit}"


def number(
    value: Any,
    name: str,
    *,
    integer: bool = False,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> int | float:
    """``value`` as an int (``integer=True``: a real int, not a bool or a float) or a finite float, within the
    given bounds; otherwise one :class:`UsageError`: ``"<name> must be an integer >= 1, got 0"``, ``"<name>
    must be > 0 and finite, got nan"``."""
    conds = [_bound(op, b) for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None]
    if integer:
        what = "an integer" + "".join(" " + c for c in conds[:1]) + "".join(" and " + c for c in conds[1:])
    else:
        what = " and ".join(conds) + " and finite" if conds else "a finite number"
    if integer:
        ok = isinstance(value, _numbers.Integral) and not isinstance(value, bool)
        x = int(value) if ok else None
    else:
        ok = isinstance(value, _numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        x = float(value) if ok else None
    ok = ok and all(
        b is None or test(x, b)
        for b, test in (
            (gt, lambda a, b: a > b),
            (ge, lambda a, b: a >= b),
            (lt, lambda a, b: a < b),
            (le, lambda a, b: a <= b),
        )
    )
    if not ok:
        raise UsageError(f"{name} must be {what}, got {value!r}")
    return x


def field(config, dotted: str) -> Any:
    """``config["a"]["b"]`` for ``"a.b"``."""
    for part in dotted.split("."):
        config = config[part]
    return config


def numbers(config, rules: Iterable[tuple[str, dict]], prefix: str = "") -> None:
    """:func:`number` on each ``(dotted field, bounds)``, named ``prefix + field`` in errors; fields absent
    from ``config`` are skipped (configs of older runs may lack newer keys)."""
    for dotted, bounds in rules:
        try:
            value = field(config, dotted)
        except (KeyError, AttributeError):
            continue
        number(value, prefix + dotted, **bounds)


def check_array_bytes(what: str, nbytes: int, fields: str, limit: int = MAX_ARRAY_BYTES) -> None:
    """Refuses (UsageError naming ``fields`` and the estimate) when one array of ``nbytes`` — ``what``, e.g.
    ``"the [P, S, K] calibration counts"`` — would exceed ``limit``."""
    if nbytes > limit:
        raise UsageError(
            f"{fields}: {what} would take ~{nbytes / 2**30:.3g} GiB, above the {limit / 2**30:g} GiB limit "
            "of one array; use smaller values"
        )


# Bounds shared by configs (keyword arguments of :func:`number`).
POSITIVE = dict(gt=0)
NON_NEGATIVE = dict(ge=0)
FRACTION = dict(ge=0, le=1)
ADAM_BETA = dict(ge=0, lt=1)
COUNT = dict(integer=True, ge=1)
