"""SFT's checkpoints on the harness :class:`~infalign_jax.harness.checkpoint.Checkpointer`
(``<workdir>/checkpoints/<step>/``, SHA-256 digests, damaged-checkpoint fallback): item ``train`` = the
parameters + optimizer state, JSON ``meta`` = the step and the train loader's position; and reading a run's
checkpoint back as a model."""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
from flax import nnx

from infalign_jax import run_settings
from infalign_jax.errors import UsageError
from infalign_jax.harness.checkpoint import Checkpointer, digest_problem
from infalign_jax.sft.layout import CHECKPOINTS, tokenizer_dir
from infalign_jax.sft.model import abstract_model
from infalign_jax.sft.steps import optimizer

ITEM = "train"  # the name of a step's pytree item: {"params": nnx state, "opt": optimizer state}


def checkpointer(workdir: Path, config: ml_collections.ConfigDict, create: bool = True) -> Checkpointer:
    """The run's checkpoints (saved every ``checkpoint_every`` steps, the newest ``keep_checkpoints`` kept);
    ``create=False`` writes nothing (for reading)."""
    return Checkpointer(
        workdir,
        config.checkpoint_every,
        config.keep_checkpoints,
        dirname=CHECKPOINTS,
        item=ITEM,
        create=create,
    )


def items(state, opt_state) -> dict:
    """The pytree a checkpoint holds."""
    return {"params": state, "opt": opt_state}


def step_mismatch(restored: dict, meta: dict, step: int) -> str | None:
    """Why a restored checkpoint is not that of ``step`` (None: it is): the ``validate`` of
    :meth:`~infalign_jax.harness.checkpoint.Checkpointer.restore_intact`."""
    if meta.get("step") != step:
        return f"its meta records step {meta.get('step')!r}"
    return None


def _key_name(key) -> str:
    """The name of one step of a pytree key path (dict key, attribute or index)."""
    return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))


def _named_leaves(tree) -> dict:
    """``{"a.b.c": leaf}`` for a pytree of dicts; the ``value`` level of nnx variables is left out."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
    return {".".join(n for k in path if (n := _key_name(k)) != "value"): leaf for path, leaf in flat}


def param_shape_diffs(ckpt: Checkpointer, step: int, state) -> list[str]:
    """How the parameter shapes of checkpoint ``step`` differ from those of ``state`` (empty: they match)."""
    saved = _named_leaves(ckpt.item_metadata(step)[ITEM]["params"])
    wanted = _named_leaves(nnx.to_pure_dict(state))
    return run_settings.diffs(
        {k: tuple(v.shape) for k, v in saved.items()}, {k: tuple(v.shape) for k, v in wanted.items()}
    )


def load_checkpoint(workdir, config: ml_collections.ConfigDict, step: int | None = None):
    """``(model, meta)`` from the checkpoint ``step`` (default: the latest) of an SFT ``workdir``.

    ``config`` must be the run's config (model shape, optimizer); the vocabulary size comes from the run's
    tokenizer. ``meta`` = ``{"step": int, "loader": {"epoch", "index"}}``. A checkpoint of other parameter
    shapes (another model config), or whose files are not those saved (its digests), raises
    :class:`UsageError`.
    """
    from infalign_jax.data.tokenizer import load_tokenizer

    workdir = Path(workdir)
    graphdef, state = abstract_model(config, len(load_tokenizer(tokenizer_dir(config, workdir))))
    tx, _ = optimizer(config)
    ckpt_dir = workdir / CHECKPOINTS
    if not ckpt_dir.is_dir():
        raise UsageError(f"no checkpoint in {ckpt_dir}")
    ckpt = checkpointer(workdir, config, create=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise UsageError(f"no checkpoint in {ckpt_dir}")
        if diffs := param_shape_diffs(ckpt, step, state):
            where, shapes = f"checkpoint {step} in {ckpt.directory}", run_settings.summary(diffs, 3)
            raise UsageError(f"{where} does not fit the model config (parameter shapes: {shapes})")
        if problem := digest_problem(ckpt_dir / str(step)):
            raise UsageError(f"checkpoint {step} in {ckpt.directory} is damaged: {problem}")
        restored, meta = ckpt.restore(items(state, jax.eval_shape(tx.init, state)), step)
    finally:
        ckpt.close()
    return nnx.merge(graphdef, restored["params"]), meta
