"""An SFT run's workdir: whether a run there may be continued with a config, starting over, and reading a
finished run's results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ml_collections

from infalign_jax import run_settings
from infalign_jax.errors import UsageError
from infalign_jax.harness.workdir import ResumeRule, check_settings
from infalign_jax.sft.checkpoint import checkpointer, param_shape_diffs
from infalign_jax.sft.layout import CHECKPOINTS, EVAL, EXPORT, RUN_CONFIG, RUN_OUTPUTS
from infalign_jax.sft.model import abstract_model

# Settings a resumed run may change (run length — unless the learning rate decays over it, see
# resume_rule —, logging, samples, where things are); every other setting (seed, optimizer, batch,
# lengths, tokenizer, model) must match the run's run_config.json: resuming with another one would give
# numbers that neither setting gives from scratch.
RESUMABLE_KEYS = ("num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints")
RESUMABLE_KEYS += ("num_samples", "sample_max_new_tokens", "sample_temperature", "sample_top_p")
RESUMABLE_KEYS += ("workdir", "data_dir", "manual_dir")


def settings(config: ml_collections.ConfigDict) -> dict:
    """The settings recorded for a run of ``config`` (``run_config.json``): the config as JSON."""
    return json.loads(json.dumps(config.to_dict()))


def resume_rule(config: ml_collections.ConfigDict) -> ResumeRule:
    """What a rerun of ``config`` in the same workdir may change (:data:`RESUMABLE_KEYS`, and ``vocab_size``
    when the tokenizer is given): ``num_steps`` only when the learning rate does not decay
    (``end_lr_fraction`` 1)."""
    return ResumeRule(
        resumable=RESUMABLE_KEYS + (("vocab_size",) if config.tokenizer_path else ()),
        # The cosine decay is spread over num_steps: a run continued to another length equals neither
        # length's run (with end_lr_fraction 1 the rate is constant after warmup, and that is allowed).
        extendable=config.end_lr_fraction == 1.0,
        length_note=f", with the learning rate decaying over it (end_lr_fraction {config.end_lr_fraction!r})",
        hint="pass --overwrite to start over or use a new --workdir",
    )


def check_resumable(workdir: Path, config: ml_collections.ConfigDict, tok_dir: Path) -> None:
    """Raises :class:`UsageError` (touching nothing) if the run in ``workdir`` cannot be continued with
    ``config``: it was started with other settings (its ``run_config.json``, :func:`resume_rule`), or its
    latest checkpoint holds parameters of other shapes (this also covers workdirs without
    ``run_config.json``; checked once the run's tokenizer exists)."""
    check_settings(workdir, settings(config), rule=resume_rule(config), record=RUN_CONFIG)
    if (tok_dir / "tokenizer.json").is_file():
        from infalign_jax.data.tokenizer import load_tokenizer

        check_checkpoint_shapes(workdir, config, abstract_model(config, len(load_tokenizer(tok_dir)))[1])


def check_checkpoint_shapes(workdir: Path, config: ml_collections.ConfigDict, state) -> None:
    """Raises :class:`UsageError` if the latest checkpoint in ``workdir`` holds parameters of other shapes
    than the model ``state`` (arrays or shapes): resuming from it would fail (and it is not damaged, so it
    must not be set aside as such). Reads only; a checkpoint whose metadata is unreadable passes (it is
    damaged: the resume sets it aside)."""
    if not (workdir / CHECKPOINTS).is_dir():
        return
    ckpt = checkpointer(workdir, config, create=False)
    try:
        if (latest := ckpt.latest_step()) is None:
            return
        try:
            diffs = param_shape_diffs(ckpt, latest, state)
        except Exception:  # noqa: BLE001 — Orbax raises many types on damaged metadata
            return
    finally:
        ckpt.close()
    if diffs:
        raise UsageError(
            f"{workdir} holds a run started with other settings (checkpoint {latest} parameter shapes: "
            f"{run_settings.summary(diffs, 3)}); pass --overwrite to start over or use a new --workdir"
        )


def clear_run(workdir: Path, keep: Path | None = None) -> None:
    """Removes everything an earlier run wrote into ``workdir`` (:data:`RUN_OUTPUTS`), except ``keep`` (a
    given ``tokenizer_path`` that lies there)."""
    for name in RUN_OUTPUTS:
        p = workdir / name
        if keep is not None and p.resolve() == keep.resolve():
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


# Settings that do not change what a finished run wrote: where things are, how often it logged, and the run
# length (compared with the steps eval.json records instead: a run extended under a constant learning rate
# keeps its first run_config.json).
_NOT_IN_RESULTS = ("workdir", "data_dir", "manual_dir", "log_every", "eval_every", "checkpoint_every")
_NOT_IN_RESULTS += ("keep_checkpoints", "num_steps")


def finished_run(config: ml_collections.ConfigDict, workdir: Path) -> dict | None:
    """The results (``eval.json``) of the run of ``config`` finished in ``workdir`` — its export written, the
    settings it was started with (``run_config.json``) equal to ``config`` but for where things are and how
    often it logged, ``config.num_steps`` steps trained —, else None. Reads only."""
    if not all((workdir / n).exists() for n in (EXPORT, EVAL, RUN_CONFIG)):
        return None
    try:
        results = run_settings.read_settings(workdir / EVAL)
        started = run_settings.flatten(run_settings.read_settings(workdir / RUN_CONFIG))
    except UsageError:
        return None
    now = run_settings.flatten(json.loads(json.dumps(config.to_dict())))
    if run_settings.diffs(started, now, ignore=_NOT_IN_RESULTS) or results.get("steps") != config.num_steps:
        return None
    return results
