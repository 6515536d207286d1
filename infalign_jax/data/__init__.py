"""HH-RLHF data: text parsing (:mod:`.hh_text`), the TFDS dataset (:mod:`.hh_dataset`; both re-exported by
:mod:`.hh`), a resumable grain loader (:mod:`.loader`), its HH encoders (:mod:`.encoders`) and the BPE
tokenizer (:mod:`.tokenizer`).

Names are imported lazily so ``python -m infalign_jax.data.hh`` runs without a double import.
"""

import importlib

_EXPORTS = {
    "HHSource": "hh_dataset",
    "build_hh": "hh_dataset",
    "build_or_load": "hh_dataset",
    "dialogue_turns": "hh_text",
    "load_hh": "hh_dataset",
    "split_dialogue": "hh_text",
    "split_pair": "hh_text",
    "Loader": "loader",
    "prompt_encoder": "encoders",
    "sft_encoder": "encoders",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"infalign_jax.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'infalign_jax.data' has no attribute {name!r}")
