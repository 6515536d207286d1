"""Supervised fine-tuning of the embedded default policy on HH-RLHF chosen dialogues.

The reference policy π_ref of the paper's HH experiments (Sec. 5) is an SFT model; on CPU we train a small
Llama-style decoder from scratch on the ``train`` split's chosen dialogues, with the loss on Assistant turns
only (:func:`infalign_jax.data.encoders.sft_encoder`). Pipeline::

    HH TFDS dataset (built if missing) -> byte-level BPE tokenizer (train split) -> AdamW SFT -> held-out
    loss / perplexity -> Orbax checkpoints -> HF safetensors export (+ tokenizer) -> samples in eval.json

CLI::

    python -m infalign_jax.sft --config configs/sft_hh_tiny.py [--config.num_steps=50] [--workdir DIR]

Workdir layout: ``run_config.json`` (the config the run was started with), ``checkpoints/`` (Orbax, resumed
automatically), ``tokenizer/``, ``tb/`` + ``metrics.jsonl``, ``export/`` (reload with
:func:`infalign_jax.models.from_pretrained`) and ``eval.json``. A workdir whose export is finished is never
overwritten silently: pass ``--overwrite`` (start over from scratch, tokenizer included) or use a new
``--workdir``. A run is resumed only with the model and tokenizer settings it was started with. Every input
(config values, workdir, data, tokenizer, a run to resume) is checked before anything is written or removed.

Training is one ``jax.jit``-ed pure step over the ``nnx.split`` state; the batch is sharded over the mesh's
``'data'`` axis (all local devices; multi-host via ``jax.make_array_from_process_local_data``).
"""

# One job per module: steps (the loss, the optimizer of a config and the jitted steps), model, config (the
# config checks), layout (the workdir layout), checkpoint, workdir (the resume rule, starting over, a finished
# run), samples, training (the run) and command (the CLI; ``__main__`` runs it).
from infalign_jax.sft.checkpoint import load_checkpoint
from infalign_jax.sft.command import main, summary_text
from infalign_jax.sft.config import check_config
from infalign_jax.sft.layout import CHECKPOINTS, EXPORT, RUN_CONFIG, RUN_OUTPUTS, TOKENIZER
from infalign_jax.sft.model import model_config
from infalign_jax.sft.steps import make_steps, masked_lm_loss, optimizer
from infalign_jax.sft.training import evaluate, train
from infalign_jax.sft.workdir import RESUMABLE_KEYS, finished_run

__all__ = [
    "CHECKPOINTS",
    "EXPORT",
    "RESUMABLE_KEYS",
    "RUN_CONFIG",
    "RUN_OUTPUTS",
    "TOKENIZER",
    "check_config",
    "evaluate",
    "finished_run",
    "load_checkpoint",
    "main",
    "make_steps",
    "masked_lm_loss",
    "model_config",
    "optimizer",
    "summary_text",
    "train",
]
