"""The one padding module: bucket sizes with an explicit overflow rule, batch buckets, padded rows.

Every host-side batch builder pads variable-length token lists to a few fixed shapes, so that ``jax.jit``
compiles once per bucket and never again for new inputs of a known bucket. The rules, pure numpy:

- :func:`bucket_size` — the smallest bucket that holds ``n``. What happens when ``n`` exceeds every bucket is
  the caller's explicit ``overflow`` rule (:data:`OVERFLOW_RULES`):

  - ``"raise"``: a :class:`~infalign_jax.errors.UsageError` (the sampler: a prompt longer than its largest
    length bucket);
  - ``"clamp"``: the largest bucket, the caller then refuses the rows that do not fit with its own message
    (the data loader: the field that is too long is named);
  - ``"multiple"``: the next multiple of the largest bucket — a size no bucket lists (the reward model: its
    token lengths are truncated to ``max_*_tokens`` first, so this serves only ``max_*_tokens`` above the
    top length bucket and batches above the top batch bucket).
- :func:`pow2_batch` — the sampler's batch bucket: the next power of two, rounded up to a multiple of the
  mesh's data axis.
- :func:`pad_rows` — token lists into ``[rows, length]`` values and a 0/1 mask, padded on the left (prompts
  that a decoder continues) or on the right (responses, training sequences).
- :func:`widen` — an already padded ``[B, W]`` array to a fixed width ``W' >= W`` on the same side.

Padding rows, the one convention: a padded batch holds its ``n`` real rows first and its padding rows after
them, all ``pad_value`` with mask 0; :func:`valid_rows` (bool ``[rows]``, ``row < n``) marks the real ones —
the data loader's ``valid`` field, the sampler's ``live_b`` (``rows_b < num_prompts`` inside its jit), the
reward model's ``EncodedPairs.n``. A caller whose model must attend to at least one token per row (the
sampler's prefill) sets one mask entry of each padding row itself, and drops those rows' outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from infalign_jax.errors import UsageError

OVERFLOW_RULES = ("raise", "clamp", "multiple")
SIDES = ("left", "right")


def _too_long_default(n: int, top: int) -> str:
    return f"length {n} exceeds the largest bucket {top}"


def bucket_size(
    n: int,
    buckets: Sequence[int],
    *,
    overflow: str,
    too_long: Callable[[int, int], str] = _too_long_default,
) -> int:
    """The smallest of ``buckets`` (positive ints, any order) that is ``>= n``; past the largest one, by rule:

    - ``overflow="raise"``: ``UsageError(too_long(n, largest))``;
    - ``overflow="clamp"``: the largest bucket (``n`` does not fit it: the caller must refuse those rows);
    - ``overflow="multiple"``: ``largest * ceil(n / largest)``.

    >>> bucket_size(20, (16, 32), overflow="raise"), bucket_size(70, (16, 32), overflow="multiple")
    (32, 96)
    """
    if overflow not in OVERFLOW_RULES:
        raise ValueError(f"overflow must be one of {OVERFLOW_RULES}, got {overflow!r}")
    buckets = sorted(int(b) for b in buckets)
    if not buckets:
        raise UsageError("no buckets given")
    for b in buckets:
        if n <= b:
            return b
    top = buckets[-1]
    if overflow == "raise":
        raise UsageError(too_long(n, top))
    if overflow == "clamp":
        return top
    return -(-n // top) * top


def pow2_batch(n: int, multiple: int = 1) -> int:
    """The batch bucket of ``n >= 1`` rows: the next power of two ``>= n``, rounded up to a multiple of
    ``multiple`` (e.g. the mesh's data axis). ``pow2_batch(5) == 8``, ``pow2_batch(3, 6) == 6``."""
    if n < 1 or multiple < 1:
        raise ValueError(f"need n >= 1 and multiple >= 1, got n={n}, multiple={multiple}")
    power = 1 << (n - 1).bit_length()
    return -(-power // multiple) * multiple


def _too_long_rows(n: int, length: int) -> str:
    return f"a row of {n} tokens exceeds the padded length {length}"


def pad_rows(
    seqs: Sequence[Sequence[int]],
    length: int,
    rows: int | None = None,
    *,
    side: str,
    pad_value: int = 0,
    dtype=np.int32,
    too_long: Callable[[int, int], str] = _too_long_rows,
) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> ``(values [rows, length], mask [rows, length])``; ``rows`` defaults to ``len(seqs)``.

    Row ``i < len(seqs)`` holds ``seqs[i]`` at its ``side`` end (``"left"``: the last ``len(seqs[i])``
    positions, ``"right"``: the first) and ``pad_value`` elsewhere; mask (int32) is 1 on the real tokens.
    Rows ``len(seqs) ..`` are padding rows (all ``pad_value``, mask 0; :func:`valid_rows` marks them). A
    sequence longer than ``length`` is a ``UsageError(too_long(its length, length))`` (the first one, in row
    order); more sequences than ``rows`` is a ``ValueError``.
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    rows = len(seqs) if rows is None else rows
    if rows < len(seqs):
        raise ValueError(f"{len(seqs)} sequences do not fit {rows} rows")
    values = np.full((rows, length), pad_value, dtype)
    mask = np.zeros((rows, length), np.int32)
    for i, seq in enumerate(seqs):
        seq = np.asarray(seq)
        k = seq.shape[0]
        if k > length:
            raise UsageError(too_long(k, length))
        cols = slice(length - k, length) if side == "left" else slice(0, k)
        values[i, cols] = seq
        mask[i, cols] = 1
    return values, mask


def widen(x_bw: np.ndarray, width: int, *, side: str, what: str = "tokens", dtype=None) -> np.ndarray:
    """A padded ``[B, W]`` array widened to ``[B, width]`` with zeros on its padding ``side`` (``"left"``
    for left-padded prompts, ``"right"`` for right-padded responses); ``dtype`` casts first.

    ``W > width`` is a ``ValueError`` naming ``what``: callers fix ``width`` from the same limits that
    bounded ``W``, so it is a bug, not bad input."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    x_bw = np.asarray(x_bw, dtype)
    extra = width - x_bw.shape[1]
    if extra < 0:
        raise ValueError(f"{what} of width {x_bw.shape[1]} exceed the fixed width {width}")
    return np.pad(x_bw, ((0, 0), (extra, 0) if side == "left" else (0, extra)))


def valid_rows(n: int, rows: int) -> np.ndarray:
    """bool ``[rows]``: True for the ``n`` real rows, which come first; False for the padding rows."""
    if not 0 <= n <= rows:
        raise ValueError(f"need 0 <= n <= rows, got n={n}, rows={rows}")
    return np.arange(rows) < n
