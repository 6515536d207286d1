"""Anthropic HH-RLHF preference pairs as a TFDS dataset (array_record, no TensorFlow needed).

The paper's experiments (InfAlign, Sec. 5) align on Anthropic HH. Each input line is
``{"chosen": str, "rejected": str}``; both are whole dialogues (``\\n\\nHuman: ...\\n\\nAssistant: ...``)
that share every turn but the last Assistant reply.
The pairs are parsed by :mod:`infalign_jax.data.hh_text` (shared prompt = dialogue up to and including the
last ``\\n\\nAssistant:``, checked on both texts) and written as records
``{"id": int, "prompt": str, "chosen": str, "rejected": str}`` into deterministic ``train`` / ``eval`` splits
(≈90/10 by a stable hash of the prompt, so one prompt never lands in both splits).

Input directory layout = the original repository's: ``<subset>/<split>.jsonl.gz`` (e.g.
``harmless-base/test.jsonl.gz``). Default: ``$INFALIGN_HH_DIR`` if set, else the copy packaged with
``infalign_jax`` (:data:`PACKAGED_HH_DIR`: ``harmless-base/test.jsonl.gz``, 2,312 pairs, MIT licence, with
its ``SHA256SUMS``). Input files listed in a ``SHA256SUMS`` of the input directory are checked before they
are read.

Bad input (a malformed JSON line, missing keys, pairs whose prompts differ) raises one :class:`UsageError`
naming the file and line; ``skip_bad`` skips such lines and reports their counts instead. The dataset is built
in a temporary directory and moved into place, so a failed build never corrupts an earlier one. The command
line is ``python -m infalign_jax.data.hh`` (:mod:`infalign_jax.commands.hh_data`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from infalign_jax.data.hh_text import DEFAULT_EVAL_PERCENT, SPLITS, ParseReport, iter_pairs, prompt_split
from infalign_jax.errors import UsageError
from infalign_jax.io_utils import atomic_directory, atomic_write_json, ensure_writable_dir

DATASET_NAME = "hh_rlhf"
VERSION = "1.0.0"
DEFAULT_SUBSETS = ("harmless-base",)
# The HH-RLHF harmless-base test file shipped as package data (LICENSE, README.md, SHA256SUMS beside it).
PACKAGED_HH_DIR = Path(__file__).resolve().parent / "hh_rlhf"
CHECKSUMS = "SHA256SUMS"


# ----------------------------------------------------------------------------------------------- input files


def input_files(manual_dir: str | os.PathLike, subsets: Sequence[str] | None = DEFAULT_SUBSETS) -> list[Path]:
    """The ``<subset>/{train,test}.jsonl.gz`` files under ``manual_dir`` in a fixed order.

    ``subsets=None`` takes every subset directory found. A missing directory, subset, or an empty selection
    raises :class:`UsageError`.
    """
    root = Path(manual_dir)
    if not root.is_dir():
        raise UsageError(f"HH-RLHF directory not found: {root}")
    if subsets is None:
        subsets = sorted(p.parent.name for p in root.glob("*/*.jsonl.gz"))
        subsets = sorted(set(subsets))
    files: list[Path] = []
    for s in subsets:
        found = [root / s / f"{name}.jsonl.gz" for name in ("train", "test")]
        found = [p for p in found if p.is_file()]
        if not found:
            raise UsageError(f"no {s}/train.jsonl.gz or {s}/test.jsonl.gz under {root}")
        files.extend(found)
    if not files:
        raise UsageError(f"no <subset>/<split>.jsonl.gz files under {root}")
    verify_checksums(root, files)
    return files


def verify_checksums(root: str | os.PathLike, files: Sequence[Path]) -> None:
    """Checks each of ``files`` that ``<root>/SHA256SUMS`` (``sha256sum`` format) lists against its sha256.

    A directory without ``SHA256SUMS`` and files it does not list are not checked (a user's own copy of the
    data need not have one). A mismatch or an unreadable ``SHA256SUMS`` raises :class:`UsageError`. Cheap: the
    packaged file (742 KB) hashes in a few milliseconds.
    """
    root = Path(root)
    sums_path = root / CHECKSUMS
    if not sums_path.is_file():
        return
    expected = {}
    try:
        for ln in sums_path.read_text().splitlines():
            if ln.strip():
                digest, _, name = ln.strip().partition(" ")
                expected[name.strip().lstrip("*")] = digest.lower()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{sums_path}: cannot read: {e}") from None
    for path in files:
        want = expected.get(path.relative_to(root).as_posix())
        if want is None:
            continue
        try:
            got = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as e:
            raise UsageError(f"{path}: cannot read: {e.strerror or e}") from None
        if got != want:
            raise UsageError(
                f"{path}: sha256 {got} does not match {sums_path} ({want}): the file is damaged or was "
                "changed; restore it (reinstall infalign_jax for the packaged copy)"
            )


def resolve_manual_dir(manual_dir: str | os.PathLike | None = None) -> Path:
    """The HH-RLHF input directory: ``manual_dir`` if given, else ``$INFALIGN_HH_DIR`` if set (non-empty),
    else the packaged copy :data:`PACKAGED_HH_DIR`."""
    if manual_dir is not None:
        return Path(manual_dir)
    if os.environ.get("INFALIGN_HH_DIR"):
        return Path(os.environ["INFALIGN_HH_DIR"])
    return PACKAGED_HH_DIR


def parse_hh(
    manual_dir: str | os.PathLike | None = None,
    subsets: Sequence[str] | None = DEFAULT_SUBSETS,
    skip_bad: bool = False,
    eval_percent: int = DEFAULT_EVAL_PERCENT,
) -> tuple[dict[str, list[dict]], ParseReport]:
    """Parses the HH files into ``{"train": [...], "eval": [...]}`` record lists (ordered by id) and a
    report."""
    files = input_files(resolve_manual_dir(manual_dir), subsets)
    report = ParseReport()
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for gid, prompt, chosen, rejected in iter_pairs(files, skip_bad=skip_bad, report=report):
        split = prompt_split(prompt, eval_percent)
        out[split].append({"id": gid, "prompt": prompt, "chosen": chosen, "rejected": rejected})
        report.kept[split] += 1
    if not any(out.values()):  # an empty / blank file, or --skip-bad on all-bad lines: not a dataset
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items()))
        raise UsageError(
            f"no valid preference pairs in {', '.join(str(f) for f in files)} ({report.n_lines} non-blank "
            f"lines{'; skipped: ' + skipped if skipped else ''}): refusing to build an empty dataset"
        )
    return out, report


# ----------------------------------------------------------------------------------------------- TFDS builder


def _builder_cls():
    """The TFDS builder class (defined lazily: importing tensorflow_datasets costs ~1 s)."""
    global _BUILDER
    if _BUILDER is not None:
        return _BUILDER
    import tensorflow_datasets as tfds

    class LocalInfo(tfds.core.DatasetInfo):
        def initialize_from_bucket(self) -> None:
            """No-op: this dataset is not on TFDS' bucket. TFDS' own version makes an empty temp directory per
            builder (``mkdtemp("tfds")``) that it never removes, before looking the dataset up there."""

    class HhRlhf(tfds.core.GeneratorBasedBuilder):
        """HH-RLHF preference pairs split into prompt / chosen / rejected, with hash-based train/eval
        splits."""

        VERSION = tfds.core.Version(_VERSION_STR)
        RELEASE_NOTES = {
            _VERSION_STR: "prompt/chosen/rejected records, 90/10 train/eval split by sha256(prompt)."
        }
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            "Point manual_dir at a copy of anthropics/hh-rlhf (<subset>/<split>.jsonl.gz)."
        )

        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            # TFDS' default probes importlib_resources (not installed) when the package comes from an editable
            # install; this module's own file is the right answer anyway.
            from etils import epath

            return epath.Path(__file__)

        def __init__(
            self, *, subsets=DEFAULT_SUBSETS, skip_bad=False, eval_percent=DEFAULT_EVAL_PERCENT, **kw
        ):
            self._subsets = None if subsets is None else tuple(subsets)
            self._skip_bad = skip_bad
            self._eval_percent = eval_percent
            self.parse_report: ParseReport | None = None
            super().__init__(**kw)

        def _info(self):
            text = tfds.features.Text()
            return LocalInfo(
                builder=self,
                description=__doc__,
                features=tfds.features.FeaturesDict(
                    {"id": np.int64, "prompt": text, "chosen": text, "rejected": text}
                ),
                homepage="https://github.com/anthropics/hh-rlhf",
                license="MIT",
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            records, self.parse_report = parse_hh(
                dl_manager.manual_dir, self._subsets, self._skip_bad, self._eval_percent
            )
            # TFDS cannot write an empty split; load_hh serves a missing split as an empty source.
            return {s: self._generate_examples(records[s]) for s in SPLITS if records[s]}

        def _generate_examples(self, records):
            for r in records:
                yield r["id"], r

    _BUILDER = HhRlhf
    return HhRlhf


_BUILDER = None
_VERSION_STR = VERSION


def dataset_dir(data_dir: str | os.PathLike) -> Path:
    """Where :func:`build_hh` puts the prepared dataset: ``<data_dir>/hh_rlhf/<version>``."""
    return Path(data_dir) / DATASET_NAME / VERSION


def find_dataset(data_dir: str | os.PathLike) -> Path | None:
    """The built dataset for ``data_dir``: ``data_dir`` itself if it is a dataset directory (holds
    ``dataset_info.json``), else ``<data_dir>/hh_rlhf/<version>`` if built; None if neither."""
    for path in (Path(data_dir), dataset_dir(data_dir)):
        if (path / "dataset_info.json").is_file():
            return path
    return None


_BUILD_FILES = ("dataset_info.json", "features.json", "parse_report.json", "LICENSE")


def _is_earlier_build(path: Path) -> bool:
    """True if ``path`` holds only the files of an earlier :func:`build_hh` (so a rebuild may replace it)."""
    entries = list(path.iterdir())
    ours = [
        p
        for p in entries
        if p.is_file()
        and not p.is_symlink()
        and (p.name in _BUILD_FILES or fnmatch.fnmatchcase(p.name, f"{DATASET_NAME}-*.array_record-*"))
    ]
    return len(ours) == len(entries) and (path / "dataset_info.json") in ours


def build_hh(
    manual_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike = "runs/data",
    subsets: Sequence[str] | None = DEFAULT_SUBSETS,
    skip_bad: bool = False,
    eval_percent: int = DEFAULT_EVAL_PERCENT,
) -> Path:
    """Builds the dataset into ``<data_dir>/hh_rlhf/<version>`` and returns that path.

    Built in a temporary sibling directory and moved into place only on success, so an existing build is never
    corrupted; it is replaced only if it holds nothing but an earlier build's files (anything else there, or a
    ``data_dir`` that is itself a dataset directory, raises :class:`UsageError`). Writes ``parse_report.json``
    (kept / skipped counts) beside the TFDS files. Bad lines raise
    :class:`UsageError` (with file and line) unless ``skip_bad``.
    """
    manual = resolve_manual_dir(manual_dir)
    files = input_files(manual, subsets)  # fail early, before TFDS, on a missing directory or subset
    if not 0 < eval_percent < 100:
        raise UsageError(f"eval_percent must be in (0, 100), got {eval_percent}")
    if (Path(data_dir) / "dataset_info.json").exists():
        raise UsageError(
            f"data dir {data_dir} is itself a built HH dataset; pass the directory that holds "
            f"{DATASET_NAME}/{VERSION} instead"
        )
    final = dataset_dir(data_dir)
    new_dirs = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
    ensure_writable_dir(final.parent)
    try:
        _build_into(final, manual, files, subsets, skip_bad, eval_percent)
    except BaseException:  # a failed build (e.g. a bad line: exit 2) leaves no directory it created
        for p in new_dirs:
            with contextlib.suppress(OSError):
                p.rmdir()  # only if still empty
        raise
    return final


def _build_into(final: Path, manual: Path, files, subsets, skip_bad: bool, eval_percent: int) -> None:
    import tensorflow_datasets as tfds

    with atomic_directory(final, replace=_is_earlier_build) as tmp:
        scratch = tmp / "_build"
        builder = _builder_cls()(
            subsets=subsets,
            skip_bad=skip_bad,
            eval_percent=eval_percent,
            data_dir=str(scratch),
            file_format="array_record",
        )
        builder.download_and_prepare(
            download_dir=str(scratch / "downloads"),
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual)),
        )
        for p in Path(builder.data_dir).iterdir():
            shutil.move(str(p), tmp / p.name)
        shutil.rmtree(scratch)
        tmp.chmod(0o755)
        report = builder.parse_report.as_dict()
        report.update(
            manual_dir=str(manual),
            subsets=sorted({f.parent.name for f in files}),  # 'all' records the subsets it found
            eval_percent=eval_percent,
            skip_bad=skip_bad,
        )
        atomic_write_json(tmp / "parse_report.json", report)


class HHSource:
    """Random-access view of one split: ``len(src)``, ``src[i] -> {"id": int, "prompt": str, "chosen": str,
    "rejected": str}`` (python values). Picklable-free and cheap; works as a grain ``MapDataset`` source."""

    def __init__(self, tfds_source):
        self._src = tfds_source

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        n = len(self._src)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} records")
        return _decode(self._src[i % n])

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))

    def __getitems__(self, idx: Sequence[int]) -> list[dict]:
        return [self[i] for i in idx]

    def __repr__(self) -> str:
        return f"HHSource(n={len(self)})"


def _decode(rec: dict) -> dict:
    out = {}
    for k, v in rec.items():
        v = v.item() if isinstance(v, np.generic | np.ndarray) else v
        out[k] = v.decode("utf-8") if isinstance(v, bytes) else (int(v) if k == "id" else v)
    return out


def load_hh(split: str, data_dir: str | os.PathLike = "runs/data") -> HHSource:
    """Opens split ``"train"`` or ``"eval"`` of a dataset built by :func:`build_hh` in ``data_dir``.

    Also accepts the dataset directory itself (``<data_dir>/hh_rlhf/<version>``). Missing dataset →
    UsageError.
    """
    import tensorflow_datasets as tfds

    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = find_dataset(data_dir)
    if path is None:
        raise UsageError(
            f"no HH dataset at {data_dir}; build it with: "
            f"python -m infalign_jax.data.hh --data-dir {data_dir}"
        )
    try:
        builder = tfds.builder_from_directory(str(path))
        if split not in builder.info.splits:
            return HHSource([])  # too little input for this split to get any example
        source = builder.as_data_source(split=split)
        if len(source):
            source[len(source) - 1]  # array_record opens its shards lazily: a truncated one fails here
        return HHSource(source)
    except Exception as e:  # damaged metadata or array_record shards (e.g. truncated): tfds raises many kinds
        raise UsageError(
            f"the HH dataset at {path} cannot be read ({' '.join(str(e).split())[:200]}); rebuild it with: "
            f"python -m infalign_jax.data.hh --data-dir {data_dir}"
        ) from None


def build_or_load(split: str, data_dir: str | os.PathLike = "runs/data", manual_dir=None) -> HHSource:
    """:func:`load_hh`, building the dataset first (default source) if it is not there yet.

    Like :func:`load_hh`, accepts the dataset directory itself as ``data_dir``."""
    if find_dataset(data_dir) is None:
        build_hh(manual_dir, data_dir)
    return load_hh(split, data_dir)


def finished_build(
    manual_dir, data_dir, subsets=DEFAULT_SUBSETS, skip_bad=False, eval_percent=DEFAULT_EVAL_PERCENT
) -> Path | None:
    """The dataset :func:`build_hh` with these arguments would build, if ``data_dir`` holds it already: its
    ``parse_report.json`` records the same inputs and settings, and every input file is older than it. None
    otherwise (reads only; missing inputs are the UsageError of :func:`input_files`)."""
    path = dataset_dir(data_dir)
    record = path / "parse_report.json"
    if not ((path / "dataset_info.json").is_file() and record.is_file()):
        return None
    manual = resolve_manual_dir(manual_dir)
    files = input_files(manual, subsets)
    try:
        report = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    wanted = dict(manual_dir=str(manual), eval_percent=eval_percent, skip_bad=skip_bad)
    wanted["subsets"] = sorted({f.parent.name for f in files})
    if not isinstance(report, dict) or any(report.get(k) != v for k, v in wanted.items()):
        return None
    built = record.stat().st_mtime_ns  # an input as new as the record (same clock tick) counts as newer
    return path if all(f.stat().st_mtime_ns < built for f in files) else None
