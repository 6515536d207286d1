"""Anthropic HH-RLHF preference pairs: the public names of the HH data and ``python -m infalign_jax.data.hh``.

The paper's experiments (InfAlign, Sec. 5) align on Anthropic HH. The work is split by job:

- :mod:`infalign_jax.data.hh_text`: text parsing — a dialogue or preference pair into the shared prompt and
  the replies (:func:`split_pair`), role turns (:func:`turn_spans`), JSONL lines into validated records
  (:func:`iter_pairs`) and the hash train / eval split (:func:`prompt_split`);
- :mod:`infalign_jax.data.hh_dataset`: the input files (checksums, the packaged copy) and the TFDS
  array_record dataset — :func:`build_hh`, :func:`load_hh`, :func:`build_or_load`, :class:`HHSource`;
- :mod:`infalign_jax.commands.hh_data`: the command line, imported only when this module runs as a script::

    python -m infalign_jax.data.hh --manual-dir DIR --data-dir DIR [--subsets harmless-base] [--skip-bad]
"""

from infalign_jax.data.hh_dataset import (
    CHECKSUMS,
    DATASET_NAME,
    DEFAULT_SUBSETS,
    PACKAGED_HH_DIR,
    VERSION,
    HHSource,
    build_hh,
    build_or_load,
    dataset_dir,
    find_dataset,
    finished_build,
    input_files,
    load_hh,
    parse_hh,
    resolve_manual_dir,
    verify_checksums,
)
from infalign_jax.data.hh_text import (
    ASSISTANT,
    DEFAULT_EVAL_PERCENT,
    HUMAN,
    SPLITS,
    ParseReport,
    dialogue_turns,
    iter_pairs,
    prompt_split,
    split_dialogue,
    split_pair,
    turn_spans,
)

__all__ = [
    "ASSISTANT",
    "CHECKSUMS",
    "DATASET_NAME",
    "DEFAULT_EVAL_PERCENT",
    "DEFAULT_SUBSETS",
    "HUMAN",
    "PACKAGED_HH_DIR",
    "SPLITS",
    "VERSION",
    "HHSource",
    "ParseReport",
    "build_hh",
    "build_or_load",
    "dataset_dir",
    "dialogue_turns",
    "find_dataset",
    "finished_build",
    "input_files",
    "iter_pairs",
    "load_hh",
    "parse_hh",
    "prompt_split",
    "resolve_manual_dir",
    "split_dialogue",
    "split_pair",
    "turn_spans",
    "verify_checksums",
]


if __name__ == "__main__":
    from infalign_jax.commands.hh_data import run

    run()
