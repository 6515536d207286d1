"""Byte-level BPE tokenizer for the embedded HH policy, trained with the ``tokenizers`` library.

Trained on the HH ``train`` split only (prompts and both replies), so the held-out split stays unseen. Special
tokens ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2; the role markers ``"\\n\\nHuman:"`` /
``"\\n\\nAssistant:"`` are single added tokens (the last two ids); encoding prepends ``<bos>`` (a
post-processor), decoding is byte-level. Saved as ``tokenizer.json`` + ``tokenizer_config.json`` so
``transformers.AutoTokenizer.from_pretrained(dir)`` loads it (no torch, no remote code).

:func:`train_hh_tokenizer` writes atomically: its output directory must not exist yet or be empty, or with
``overwrite`` hold an earlier tokenizer (replaced); anything else is never touched (:class:`UsageError`). The
command line is ``python -m infalign_jax.tokenizer_train`` (:mod:`infalign_jax.tokenizer_train`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from infalign_jax.errors import UsageError
from infalign_jax.io_utils import (
    atomic_directory,
    check_directory_path,
    ensure_writable_dir,
    import_transformers,
)

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
# Dialogue role markers become single (non-special) tokens: shorter sequences and clean turn boundaries.
ROLE_TOKENS = ("\n\nHuman:", "\n\nAssistant:")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # what save_tokenizer writes
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + len(ROLE_TOKENS)  # the byte alphabet + special + role tokens
_MAX_COUNT = 2**63 - 1  # vocab_size / min_frequency beyond this overflow the tokenizers library


def check_bpe_sizes(vocab_size: int, min_frequency: int) -> None:
    """UsageError unless ``vocab_size`` and ``min_frequency`` are valid for :func:`train_bpe`."""
    if not MIN_VOCAB_SIZE <= vocab_size <= _MAX_COUNT:
        raise UsageError(
            f"vocab_size must be in [{MIN_VOCAB_SIZE}, {_MAX_COUNT}] (at least bytes + special + role "
            f"tokens), got {vocab_size}"
        )
    if not 0 <= min_frequency <= _MAX_COUNT:
        raise UsageError(f"min_frequency must be in [0, {_MAX_COUNT}], got {min_frequency}")


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2):
    """Trains a byte-level BPE ``tokenizers.Tokenizer`` on ``texts`` (deterministic for a fixed input
    order)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    check_bpe_sizes(vocab_size, min_frequency)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(ROLE_TOKENS),
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in ROLE_TOKENS])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, BOS_ID)]
    )
    return tok


def save_tokenizer(tok, out_dir: str | os.PathLike) -> Path:
    """Writes ``tokenizer.json`` and ``tokenizer_config.json`` (AutoTokenizer-loadable) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "model_max_length": 1 << 30,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_tokenizer(path: str | os.PathLike):
    """``transformers.AutoTokenizer`` for a directory written by :func:`save_tokenizer` (local files only)."""
    import_transformers()  # no PyTorch banner
    from transformers import AutoTokenizer

    path = Path(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # without the config: no pad / bos / eos ids
        if not (path / name).is_file():
            raise UsageError(f"no {name} in {path} (a directory written by infalign_jax.tokenizer_train)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # damaged JSON, a truncated file, ...: transformers / tokenizers raise many kinds
        raise UsageError(f"cannot load the tokenizer in {path}: {' '.join(str(e).split())[:300]}") from None
    ids = (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    if ids != (PAD_ID, BOS_ID, EOS_ID):
        want = (PAD_ID, BOS_ID, EOS_ID)
        raise UsageError(f"tokenizer in {path}: pad/bos/eos ids are {ids}, expected {want}")
    return tokenizer


def hh_texts(source) -> Iterable[str]:
    """Training texts from an HH split: each record's prompt, chosen and rejected reply."""
    for r in source:
        yield r["prompt"]
        yield r["chosen"]
        yield r["rejected"]


def is_tokenizer_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a directory holding a ``tokenizer.json`` and nothing but :data:`TOKENIZER_FILES`
    (what :func:`save_tokenizer` writes)."""
    path = Path(path)
    if not path.is_dir() or not (path / TOKENIZER_FILES[0]).is_file():
        return False
    return all(p.name in TOKENIZER_FILES and p.is_file() and not p.is_symlink() for p in path.iterdir())


def train_hh_tokenizer(
    data_dir, out_dir, vocab_size: int = 4096, min_frequency: int = 2, overwrite: bool = False
) -> Path:
    """Trains on the HH ``train`` split under ``data_dir`` and writes the tokenizer to ``out_dir``
    atomically.

    ``out_dir`` must not exist or be an empty directory; with ``overwrite`` it may also hold an earlier
    tokenizer (:func:`is_tokenizer_dir`), which is replaced. Anything else raises :class:`UsageError` before
    training, and nothing is touched.
    """
    from infalign_jax.data.hh_dataset import load_hh

    out = Path(out_dir)
    check_bpe_sizes(vocab_size, min_frequency)  # before the data is loaded
    check_directory_path(out, "--out")
    if not overwrite and is_tokenizer_dir(out):
        raise UsageError(f"{out} already holds a tokenizer; pass --overwrite (overwrite=True) to replace it")
    source = load_hh("train", data_dir)
    ensure_writable_dir(out.parent)
    with atomic_directory(out, replace=is_tokenizer_dir if overwrite else False) as tmp:
        save_tokenizer(train_bpe(hh_texts(source), vocab_size, min_frequency), tmp)
    return out
