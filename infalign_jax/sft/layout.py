"""The workdir layout of an SFT run (see :mod:`infalign_jax.sft`)."""

from __future__ import annotations

from pathlib import Path

import ml_collections

EXPORT, CHECKPOINTS, TOKENIZER, RUN_CONFIG = "export", "checkpoints", "tokenizer", "run_config.json"
EVAL = "eval.json"
# Everything a run writes into its workdir (what --overwrite removes; the last one: damaged checkpoints set
# aside by a resumed run).
RUN_OUTPUTS = (
    EXPORT,
    CHECKPOINTS,
    TOKENIZER,
    RUN_CONFIG,
    EVAL,
    "metrics.jsonl",
    "tb",
    f"{CHECKPOINTS}.damaged",
)


def tokenizer_dir(config: ml_collections.ConfigDict, workdir: Path) -> Path:
    """The run's tokenizer directory: the config's ``tokenizer_path``, else ``<workdir>/tokenizer``."""
    return Path(config.tokenizer_path) if config.tokenizer_path else workdir / TOKENIZER
