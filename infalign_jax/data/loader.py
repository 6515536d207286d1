"""A deterministic, resumable, multi-host batch loader over a random-access source (grain ``MapDataset``).

The epoch order is ``grain.MapDataset.range(n).shuffle(seed).repeat()`` — a different permutation per epoch, a
pure function of ``(seed, epoch)``. Each step takes the next ``batch_size * process_count`` indices (the
*global* batch); process ``p`` encodes and returns rows ``[p * batch_size, (p + 1) * batch_size)`` of it,
ready for ``jax.make_array_from_process_local_data``. Every sequence field of a batch is padded to the
smallest *bucket* length that holds the longest example of the global batch (lengths are computed once up
front, so all processes agree on the shape and jit sees at most ``len(buckets)`` shapes).

The position is a small JSON-able dict ``{"epoch": e, "index": b}`` (``b`` = batches already produced in epoch
``e``): save ``loader.state`` with a checkpoint, and ``Loader(..., state=saved)`` / ``loader.restore(saved)``
continues with exactly the batches that were still to come.

The encoders of HH records (:func:`~infalign_jax.data.encoders.sft_encoder`,
:func:`~infalign_jax.data.encoders.prompt_encoder`) live in :mod:`infalign_jax.data.encoders`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from infalign_jax import padding
from infalign_jax.errors import UsageError

Encoded = dict[str, np.ndarray]


@dataclasses.dataclass
class Loader:
    """Batches of ``encode(source[i])`` with deterministic shuffling, padding buckets, sharding and
    resumption.

    Args:
      source: random access (``len``, ``[i]``), e.g. :func:`infalign_jax.data.hh.load_hh`.
      encode: record -> dict of numpy fields; 1-D fields are sequences (padded), 0-D fields are stacked.
      batch_size: rows per process per batch.
      seed: the shuffle seed; same seed -> same batches.
      buckets: allowed padded lengths (increasing); an example longer than the last one is an error.
      shuffle: ``False`` keeps source order (for evaluation).
      num_epochs: ``None`` = endless; else iteration stops after that many epochs.
      drop_remainder: drop the last incomplete global batch of each epoch (default). Otherwise it is
        filled with padding rows, marked by the ``valid`` field (bool ``[batch_size]``, in every batch).
      pad_values: per-field padding value (default 0).
      left_pad: names of fields padded on the left (e.g. prompts for the sampler); others on the right.
      process_index / process_count: default ``jax.process_index()`` / ``jax.process_count()``.
      state: a saved :attr:`state` to resume from.
      cache: encode every example once up front and keep it in memory (HH fits easily); otherwise encode
        per batch (and, with several buckets, once up front for the lengths).
    """

    source: Sequence
    encode: Callable[[Mapping], Encoded]
    batch_size: int
    seed: int = 0
    buckets: Sequence[int] = (128,)
    shuffle: bool = True
    num_epochs: int | None = None
    drop_remainder: bool = True
    pad_values: Mapping[str, int] = dataclasses.field(default_factory=dict)
    left_pad: Sequence[str] = ()
    process_index: int | None = None
    process_count: int | None = None
    state: dict | None = None
    cache: bool = True

    def __post_init__(self):
        import grain

        if self.process_index is None or self.process_count is None:
            import jax

            self.process_index = jax.process_index() if self.process_index is None else self.process_index
            self.process_count = jax.process_count() if self.process_count is None else self.process_count
        if not 0 <= self.process_index < self.process_count:
            raise UsageError(f"process_index {self.process_index} not in [0, {self.process_count})")
        if self.batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {self.batch_size}")
        self.buckets = tuple(sorted(int(b) for b in self.buckets))
        if not self.buckets or self.buckets[0] < 1:
            raise UsageError(f"buckets must be positive lengths, got {self.buckets}")
        self.n = len(self.source)
        self.global_batch = self.batch_size * self.process_count
        if self.n == 0:
            raise UsageError("the data source is empty")
        order = grain.MapDataset.range(self.n)
        # shuffle-then-repeat draws a fresh permutation for every epoch, all derived from ``seed``.
        self._order = order.shuffle(seed=self.seed).repeat() if self.shuffle else order
        self._cached = [self._encode_now(i) for i in range(self.n)] if self.cache else None
        if len(self.buckets) == 1:
            self._lengths = None
        else:
            self._lengths = np.array([_max_len(self._encode(i)) for i in range(self.n)])
        self.restore(self.state or {"epoch": 0, "index": 0})

    # ------------------------------------------------------------------ position

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.global_batch)
        return full + (1 if rest and not self.drop_remainder else 0)

    def restore(self, state: Mapping) -> None:
        """Continues from a position saved from :attr:`state`."""
        try:
            epoch, index = int(state["epoch"]), int(state["index"])
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"bad loader state {state!r}: need integer 'epoch' and 'index'") from e
        if epoch < 0 or not 0 <= index <= self.batches_per_epoch:
            raise UsageError(
                f"loader state {state!r} out of range ({self.batches_per_epoch} batches per epoch)"
            )
        self.state = {"epoch": epoch, "index": index}

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[Encoded]:
        if self.batches_per_epoch == 0:
            raise UsageError(f"{self.n} examples make no full global batch of {self.global_batch}")
        while self.num_epochs is None or self.state["epoch"] < self.num_epochs:
            epoch, index = self.state["epoch"], self.state["index"]
            if index >= self.batches_per_epoch:
                self.state = {"epoch": epoch + 1, "index": 0}
                continue
            batch = self.batch_at(epoch, index)
            self.state = {"epoch": epoch, "index": index + 1}
            yield batch

    def global_indices(self, epoch: int, index: int) -> np.ndarray:
        """Source indices of global batch ``index`` of ``epoch`` (shorter for a final partial batch)."""
        start = index * self.global_batch
        stop = min(start + self.global_batch, self.n)
        if not self.shuffle:
            return np.arange(start, stop, dtype=np.int64)
        base = epoch * self.n  # the endless shuffled order: epoch e occupies positions [e*n, (e+1)*n)
        return np.array([self._order[base + j] for j in range(start, stop)], dtype=np.int64)

    def batch_at(self, epoch: int, index: int) -> Encoded:
        """The process-local batch ``index`` of ``epoch`` (pure: does not move the position)."""
        idx = self.global_indices(epoch, index)
        if self._lengths is None:
            length = self.buckets[0]
        else:
            # clamp: a field longer than the largest bucket is refused by _collate, which names it
            length = padding.bucket_size(int(self._lengths[idx].max()), self.buckets, overflow="clamp")
        lo = self.process_index * self.batch_size
        mine = idx[lo : lo + self.batch_size]
        rows = [self._encode(int(i)) for i in mine]
        template = rows[0] if rows else self._encode(0)  # field names / dtypes for an all-padding batch
        return _collate(rows, template, self.batch_size, length, self.pad_values, set(self.left_pad))

    def _encode(self, i: int) -> Encoded:
        return self._cached[i] if self._cached is not None else self._encode_now(i)

    def _encode_now(self, i: int) -> Encoded:
        return {k: np.asarray(v) for k, v in self.encode(self.source[i]).items()}


def _max_len(ex: Encoded) -> int:
    return max((v.shape[0] for v in ex.values() if v.ndim == 1), default=0)


def _collate(rows, template, batch_size, length, pad_values, left_pad) -> Encoded:
    """Stacks rows into ``[batch_size, ...]`` arrays, padding 1-D fields to ``length``; adds ``valid`` [B]."""
    out: Encoded = {}
    for k, v0 in template.items():
        if v0.ndim == 0:
            arr = np.zeros((batch_size,), v0.dtype)
            for r, ex in enumerate(rows):
                arr[r] = ex[k]
        elif v0.ndim == 1:
            arr, _ = padding.pad_rows(
                [ex[k] for ex in rows],
                length,
                batch_size,
                side="left" if k in left_pad else "right",
                pad_value=pad_values.get(k, 0),
                dtype=v0.dtype,
                too_long=lambda n, length, k=k: f"field {k!r} has length {n} > the largest bucket {length}",
            )
        else:
            raise UsageError(f"field {k!r} must be 0-D or 1-D, got shape {v0.shape}")
        out[k] = arr
    out["valid"] = padding.valid_rows(len(rows), batch_size)
    return out
