"""HH-RLHF data: parsing + TFDS builder (:mod:`.hh`) and a resumable grain loader (:mod:`.loader`).

Names are imported lazily so ``python -m infalign_jax.data.hh`` runs without a double import.
"""

import importlib

_EXPORTS = {
    "HHSource": "hh",
    "build_hh": "hh",
    "build_or_load": "hh",
    "dialogue_turns": "hh",
    "load_hh": "hh",
    "split_dialogue": "hh",
    "split_pair": "hh",
    "Loader": "loader",
    "prompt_encoder": "loader",
    "sft_encoder": "loader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"infalign_jax.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'infalign_jax.data' has no attribute {name!r}")
