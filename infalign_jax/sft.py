"""Supervised fine-tuning of the embedded default policy on HH-RLHF chosen dialogues.

The reference policy π_ref of the paper's HH experiments (Sec. 5) is an SFT model; on CPU we train a small
Llama-style decoder from scratch on the ``train`` split's chosen dialogues, with the loss on Assistant turns
only (:func:`infalign_jax.data.loader.sft_encoder`). Pipeline::

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

from __future__ import annotations

import functools
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from infalign_jax import config_checks as cc
from infalign_jax import run_settings
from infalign_jax.cli import (
    UsageError,
    define_distributed_flags,
    initialize_distributed,
    parse_config_flags,
    run_main,
    run_summary,
)
from infalign_jax.io_utils import atomic_write_json, check_directory_path
from infalign_jax.preemption import EXIT_PREEMPTED, Preempted, sigterm_flag
from infalign_jax.seeds import check_seed

EXPORT, CHECKPOINTS, TOKENIZER, RUN_CONFIG = "export", "checkpoints", "tokenizer", "run_config.json"
# Everything a run writes into its workdir (what --overwrite removes).
RUN_OUTPUTS = (EXPORT, CHECKPOINTS, TOKENIZER, RUN_CONFIG, "eval.json", "metrics.jsonl", "tb")
# Config keys (besides the ``model`` block) a resumed run must keep: they fix the parameters or the tokenizer.
# Settings a resumed run may change (run length — unless the learning rate decays over it, see
# _check_resumable —, logging, samples, where things are); every other setting (seed, optimizer, batch,
# lengths, tokenizer, model) must match the run's run_config.json: resuming with another one would give
# numbers that neither setting gives from scratch.
RESUMABLE_KEYS = ("num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints")
RESUMABLE_KEYS += ("num_samples", "sample_max_new_tokens", "sample_temperature", "sample_top_p")
RESUMABLE_KEYS += ("workdir", "data_dir", "manual_dir")


# ---------------------------------------------------------------------------------------------- pure parts


def masked_lm_loss(logits_btv, tokens_bt, loss_mask_bt):
    """``(sum of -log p(target), number of targets)`` for next-token prediction.

    Position t predicts ``tokens[t + 1]``; it counts where ``loss_mask[t + 1] == 1``.
    """
    logp_btv = jax.nn.log_softmax(logits_btv[:, :-1].astype(jnp.float32), axis=-1)
    targets_bt = tokens_bt[:, 1:]
    nll_bt = -jnp.take_along_axis(logp_btv, targets_bt[..., None], axis=-1)[..., 0]
    w_bt = loss_mask_bt[:, 1:].astype(jnp.float32)
    return jnp.sum(nll_bt * w_bt), jnp.sum(w_bt)


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(tx, schedule)``: AdamW with linear warmup + cosine decay (to ``end_lr_fraction`` of the peak) and
    global-norm clipping.

    Weight decay applies to matrices only (ndim >= 2), not to norm scales.
    """
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=max(config.num_steps, config.warmup_steps + 1),
        end_value=config.learning_rate * config.end_lr_fraction,
    )
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay, mask=decay_mask),
    ), schedule


def make_steps(graphdef, tx, pad_id: int):
    """Jitted ``train_step(state, opt_state, tokens_bt, loss_mask_bt) -> (state, opt_state, metrics)`` and
    ``eval_step(state, tokens_bt, loss_mask_bt) -> (nll_sum, n_targets)`` (pure functions of the state)."""
    from infalign_jax.models import functional

    def loss_fn(state, tokens_bt, loss_mask_bt):
        logits_btv = functional.forward(graphdef, state, tokens_bt, mask_bt=tokens_bt != pad_id)
        nll, n = masked_lm_loss(logits_btv, tokens_bt, loss_mask_bt)
        return nll / jnp.maximum(n, 1.0), n

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(state, opt_state, tokens_bt, loss_mask_bt):
        (loss, n), grads = jax.value_and_grad(loss_fn, has_aux=True)(state, tokens_bt, loss_mask_bt)
        updates, opt_state = tx.update(grads, opt_state, state)
        state = optax.apply_updates(state, updates)
        return state, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "targets": n}

    @jax.jit
    def eval_step(state, tokens_bt, loss_mask_bt):
        logits_btv = functional.forward(graphdef, state, tokens_bt, mask_bt=tokens_bt != pad_id)
        return masked_lm_loss(logits_btv, tokens_bt, loss_mask_bt)

    return train_step, eval_step


# ---------------------------------------------------------------------------------------------- pieces


def model_config(config: ml_collections.ConfigDict, vocab_size: int):
    """The :class:`~infalign_jax.models.ModelConfig` of ``config``'s ``model`` block for a ``vocab_size``
    tokenizer."""
    from infalign_jax.models import ModelConfig, RopeConfig

    m = config.model
    return ModelConfig(
        arch=m.arch,
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        head_dim=m.head_dim,
        max_position_embeddings=config.max_len,
        rope=RopeConfig(theta=m.rope_theta),
        tie_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def _abstract_model(config: ml_collections.ConfigDict, vocab_size: int):
    """``(graphdef, abstract state)`` of the model ``config`` describes (shapes only, nothing allocated)."""
    from infalign_jax.models import Transformer

    return nnx.split(nnx.eval_shape(lambda: Transformer(model_config(config, vocab_size), rngs=nnx.Rngs(0))))


INTEGER_FIELDS = ("batch_size", "num_steps", "log_every", "eval_every", "checkpoint_every")
INTEGER_FIELDS += ("keep_checkpoints",)


def _is_int(v, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


# Numeric fields checked first (config_checks.number bounds): learning_rate=nan used to train to NaN weights
# and export them.
CONFIG_NUMBERS = tuple((name, cc.COUNT) for name in INTEGER_FIELDS) + (
    ("learning_rate", cc.POSITIVE),
    ("end_lr_fraction", cc.NON_NEGATIVE),
    ("weight_decay", cc.NON_NEGATIVE),
    ("b1", cc.ADAM_BETA),
    ("b2", cc.ADAM_BETA),
    ("grad_clip", cc.POSITIVE),
    ("num_samples", dict(integer=True, ge=0)),
)


def _check_config(config) -> None:
    """Raises :class:`UsageError` for any config value the run would fail on later: called before anything is
    loaded or written."""
    from infalign_jax.sampling import SamplingConfig
    from infalign_jax.tokenizer_train import MIN_VOCAB_SIZE

    cc.numbers(config, CONFIG_NUMBERS)
    check_seed(config.seed)
    n_data = jax.device_count()
    if config.batch_size % n_data:
        raise UsageError(f"batch_size {config.batch_size} is not a multiple of the {n_data} devices")
    if not _is_int(config.warmup_steps, 0):
        raise UsageError(f"warmup_steps must be an integer >= 0, got {config.warmup_steps!r}")
    buckets = config.buckets
    if not isinstance(buckets, tuple | list) or not buckets or not all(_is_int(b, 1) for b in buckets):
        raise UsageError(f"buckets must be a non-empty tuple of positive lengths, got {buckets!r}")
    if max(buckets) != config.max_len:
        raise UsageError(f"the largest bucket {max(buckets)} must equal max_len {config.max_len}")
    if not (_is_int(config.max_prompt_len, 2) and config.max_prompt_len < config.max_len):
        raise UsageError(
            f"need 2 <= max_prompt_len < max_len, got max_prompt_len {config.max_prompt_len!r}, "
            f"max_len {config.max_len}"
        )
    if not config.tokenizer_path and not _is_int(config.vocab_size, MIN_VOCAB_SIZE):
        raise UsageError(f"vocab_size must be an integer >= {MIN_VOCAB_SIZE}, got {config.vocab_size!r}")
    model_config(config, config.vocab_size)  # the model block's own checks (heads, architecture, ...)
    if not config.tokenizer_path:
        cc.check_array_bytes(
            "the float32 [B, T, V] logits",
            4 * config.batch_size * config.max_len * config.vocab_size,
            "batch_size x max_len x vocab_size",
        )
    if config.num_samples > 0:
        if not _is_int(config.sample_max_new_tokens, 1):
            raise UsageError(
                f"sample_max_new_tokens must be an integer >= 1, got {config.sample_max_new_tokens!r}"
            )
        SamplingConfig(temperature=config.sample_temperature, top_p=config.sample_top_p)


def _key_name(key) -> str:
    """The name of one step of a pytree key path (dict key, attribute or index)."""
    return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))


def _named_leaves(tree) -> dict:
    """``{"a.b.c": leaf}`` for a pytree of dicts; the ``value`` level of nnx variables is left out."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
    return {".".join(n for k in path if (n := _key_name(k)) != "value"): leaf for path, leaf in flat}


def _run_identity(config_dict: dict) -> dict:
    """The flattened settings a resumed run must keep: all but :data:`RESUMABLE_KEYS` (and ``vocab_size``
    unless the run trains its tokenizer)."""
    flat = run_settings.flatten(json.loads(json.dumps(config_dict)))
    skip = set(RESUMABLE_KEYS) | ({"vocab_size"} if flat.get("tokenizer_path") else set())
    return {k: v for k, v in flat.items() if k not in skip}


def _param_shape_diffs(mngr, step: int, state) -> list[str]:
    """How the parameter shapes of checkpoint ``step`` differ from those of ``state`` (empty: they match)."""
    saved = _named_leaves(mngr.item_metadata(step)["train"]["params"])
    wanted = _named_leaves(nnx.to_pure_dict(state))
    return run_settings.diffs(
        {k: tuple(v.shape) for k, v in saved.items()}, {k: tuple(v.shape) for k, v in wanted.items()}
    )


def _check_resumable(workdir: Path, config, tok_dir: Path) -> None:
    """Raises :class:`UsageError` (touching nothing) if the run in ``workdir`` cannot be continued with
    ``config``: it was started with other model / tokenizer settings (its ``run_config.json``), or its latest
    checkpoint holds parameters of other shapes (this also covers workdirs without ``run_config.json``)."""
    saved = workdir / RUN_CONFIG
    diffs, what = [], f"{RUN_CONFIG}: "
    if saved.is_file():
        started = run_settings.read_settings(saved)
        diffs = run_settings.diffs(_run_identity(started), _run_identity(config.to_dict()))
        if not diffs and started.get("num_steps") != config.num_steps and config.end_lr_fraction != 1.0:
            # The cosine decay is spread over num_steps: a run continued to another length equals neither
            # length's run (with end_lr_fraction 1 the rate is constant after warmup, and that is allowed).
            diffs = [
                f"num_steps: {started.get('num_steps')!r} -> {config.num_steps!r}, with the learning rate "
                f"decaying over it (end_lr_fraction {config.end_lr_fraction!r})"
            ]
    if not diffs and (workdir / CHECKPOINTS).is_dir() and (tok_dir / "tokenizer.json").is_file():
        from infalign_jax.tokenizer_train import load_tokenizer

        mngr = _checkpoint_manager(workdir / CHECKPOINTS, config, create=False)
        if (latest := mngr.latest_step()) is not None:
            _, state = _abstract_model(config, len(load_tokenizer(tok_dir)))
            diffs, what = _param_shape_diffs(mngr, latest, state), f"checkpoint {latest} parameter shapes: "
        mngr.close()
    if diffs:
        raise UsageError(
            f"{workdir} holds a run started with other settings "
            f"({what}{run_settings.summary(diffs, 3)}); pass --overwrite to start over or use a new --workdir"
        )


def _sync_processes(name: str) -> None:
    """A barrier of all processes of a jax.distributed run (a no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _clear_run(workdir: Path, keep: Path | None = None) -> None:
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


def _global_batch(batch: dict, mesh) -> tuple[jax.Array, jax.Array]:
    from infalign_jax.mesh import data_sharding

    sh = data_sharding(mesh, 2)
    return tuple(jax.make_array_from_process_local_data(sh, batch[k]) for k in ("tokens", "loss_mask"))


def evaluate(eval_step, state, loader, mesh) -> dict:
    """Token-level held-out loss and perplexity over one pass of ``loader`` (padding rows have no targets)."""
    nll, n = 0.0, 0.0
    for batch in loader:
        s, c = eval_step(state, *_global_batch(batch, mesh))
        nll, n = nll + float(s), n + float(c)
    loss = nll / max(n, 1.0)
    return {"eval_loss": loss, "eval_perplexity": math.exp(loss), "eval_targets": int(n)}


def _check_finite(mngr, writer, step: int, rows: list[dict]) -> None:
    """Stops the run (train.NonFiniteError, exit 1) when a loss or gradient norm since the last check is NaN
    or infinite: before it is logged, checkpointed or exported (the last checkpoint stays the newest)."""
    from infalign_jax.train import NonFiniteError

    bad = [f"{k}={float(v)}" for row in rows for k, v in row.items() if not np.isfinite(float(v))]
    if bad:
        mngr.wait_until_finished()  # an earlier checkpoint still being written completes
        writer.close()  # the finite rows logged so far are kept; the progress bar ends its line
        last = mngr.latest_step()
        raise NonFiniteError(
            f"non-finite SFT values by step {step} ({', '.join(bad[:3])}); stopped without saving — last "
            f"checkpoint: {'none' if last is None else f'step {last}'}"
        )


def _checkpoint_manager(path: Path, config, create: bool = True):
    """Orbax manager of the run's checkpoints (items ``train`` = params + optimizer state, ``meta`` = JSON);
    ``create=False`` writes nothing (for reading)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=create)
    handlers = {"train": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(path.absolute(), options=options, item_handlers=handlers)


def _save(mngr, step: int, state, opt_state, meta: dict) -> None:
    import orbax.checkpoint as ocp

    mngr.save(
        step,
        args=ocp.args.Composite(
            train=ocp.args.StandardSave({"params": state, "opt": opt_state}),
            meta=ocp.args.JsonSave(meta),
        ),
    )


def _restore(mngr, step: int, state, opt_state):
    """``(state, opt_state, meta)`` of checkpoint ``step``, restored onto the shardings of the given trees.

    Parameters of other shapes than ``state``'s (a checkpoint of another model config) raise
    :class:`UsageError`."""
    import orbax.checkpoint as ocp

    if diffs := _param_shape_diffs(mngr, step, state):
        where = f"checkpoint {step} in {mngr.directory}"
        shapes = run_settings.summary(diffs, 3)
        raise UsageError(f"{where} does not fit the model config (parameter shapes: {shapes})")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        {"params": state, "opt": opt_state},
    )
    out = mngr.restore(
        step, args=ocp.args.Composite(train=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    )
    return out["train"]["params"], out["train"]["opt"], out["meta"]


def load_checkpoint(workdir, config: ml_collections.ConfigDict, step: int | None = None):
    """``(model, meta)`` from the Orbax checkpoint ``step`` (default: the latest) of an SFT ``workdir``.

    ``config`` must be the run's config (model shape, optimizer); the vocabulary size comes from the run's
    tokenizer. ``meta`` = ``{"step": int, "loader": {"epoch", "index"}}``.
    """
    from infalign_jax.tokenizer_train import load_tokenizer

    workdir = Path(workdir)
    tok_dir = Path(config.tokenizer_path) if config.tokenizer_path else workdir / TOKENIZER
    graphdef, state = _abstract_model(config, len(load_tokenizer(tok_dir)))
    tx, _ = make_optimizer(config)
    opt_state = jax.eval_shape(tx.init, state)
    mngr = _checkpoint_manager(workdir / CHECKPOINTS, config)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise UsageError(f"no checkpoint in {workdir / CHECKPOINTS}")
    state, _, meta = _restore(mngr, step, state, opt_state)
    mngr.close()
    return nnx.merge(graphdef, state), meta


def _samples(model, tokenizer, eval_src, config) -> list[dict]:
    """Greedy and temperature samples for the first ``num_samples`` held-out prompts (helper F's Sampler)."""
    from infalign_jax.data.loader import prompt_encoder
    from infalign_jax.sampling import Sampler, SamplingConfig

    if config.num_samples <= 0 or len(eval_src) == 0:
        return []
    enc = prompt_encoder(tokenizer, config.max_prompt_len)
    recs = [eval_src[i] for i in range(min(config.num_samples, len(eval_src)))]
    prompts = [enc(r)["prompt_tokens"].tolist() for r in recs]
    sampler = Sampler(model, eos_ids=(2,), pad_id=0)
    outs = {}
    for name, sc in (
        ("greedy", SamplingConfig(temperature=0.0)),
        ("sampled", SamplingConfig(temperature=config.sample_temperature, top_p=config.sample_top_p)),
    ):
        o = sampler.sample(
            prompts, n=1, max_new_tokens=config.sample_max_new_tokens, seed=config.seed, config=sc
        )
        outs[name] = [
            tokenizer.decode(o.tokens[i, 0][o.mask[i, 0]], skip_special_tokens=True) for i in range(len(recs))
        ]
    return [
        {
            "id": r["id"],
            "prompt_tail": tokenizer.decode(p, skip_special_tokens=True)[-300:],
            "chosen": r["chosen"],
            "greedy": outs["greedy"][i],
            "sampled": outs["sampled"][i],
        }
        for i, (r, p) in enumerate(zip(recs, prompts, strict=True))
    ]


# ---------------------------------------------------------------------------------------------- driver


def train(config: ml_collections.ConfigDict, workdir: str | None = None, overwrite: bool = False) -> dict:
    """Runs SFT; returns (and writes to ``<workdir>/eval.json``) the results. See the module docstring.

    All inputs are checked first (:class:`UsageError`, nothing written): config values, ``workdir``, the data,
    a given tokenizer, and that a run to resume was started with this model / tokenizer config. Only then does
    ``overwrite`` remove the earlier run (:data:`RUN_OUTPUTS`, tokenizer included) to start from scratch.
    """
    from infalign_jax.data.hh import build_or_load, load_hh
    from infalign_jax.data.loader import Loader, sft_encoder
    from infalign_jax.mesh import make_mesh, replicated
    from infalign_jax.metrics_log import MetricsWriter
    from infalign_jax.models import Transformer, save_pretrained
    from infalign_jax.tokenizer_train import PAD_ID, load_tokenizer, train_hh_tokenizer

    t0 = time.time()
    _check_config(config)
    workdir = Path(workdir or config.workdir)
    check_directory_path(workdir, "workdir")
    check_directory_path(config.data_dir, "data_dir")
    export_dir = workdir / EXPORT
    if export_dir.exists() and not overwrite:
        raise UsageError(
            f"{workdir} already holds a finished export ({export_dir}); "
            "use a new --workdir or pass --overwrite"
        )
    tok_dir = Path(config.tokenizer_path) if config.tokenizer_path else workdir / TOKENIZER
    if config.tokenizer_path:  # loaded now: a damaged or foreign one fails before anything is written
        load_tokenizer(tok_dir)
    main_process = jax.process_index() == 0

    # Data (built into data_dir if it has none — by process 0 while the others wait: two builders of one
    # shared data_dir would race), then the workdir: resume, or start over with --overwrite.
    if not main_process:
        _sync_processes("infalign_jax.sft: data ready")
    train_src = build_or_load("train", config.data_dir, config.manual_dir or None)
    if main_process:
        _sync_processes("infalign_jax.sft: data ready")
    eval_src = load_hh("eval", config.data_dir)
    if len(train_src) < config.batch_size or len(eval_src) == 0:
        raise UsageError(
            f"the dataset in {config.data_dir} has {len(train_src)} train / {len(eval_src)} eval dialogues: "
            f"need at least batch_size ({config.batch_size}) / 1"
        )
    if overwrite:
        if main_process:
            _clear_run(workdir, keep=tok_dir if config.tokenizer_path else None)
    else:
        _check_resumable(workdir, config, tok_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    if main_process and not (workdir / RUN_CONFIG).exists():
        atomic_write_json(workdir / RUN_CONFIG, config.to_dict())
    if not (tok_dir / "tokenizer.json").exists() and main_process:
        train_hh_tokenizer(config.data_dir, tok_dir, config.vocab_size)
    _sync_processes("infalign_jax.sft: workdir and tokenizer ready")  # written by process 0 above
    tokenizer = load_tokenizer(tok_dir)
    encode = sft_encoder(tokenizer, config.max_len, config.max_prompt_len)
    local_batch = config.batch_size // jax.process_count()
    train_loader = Loader(train_src, encode, local_batch, seed=config.seed, buckets=config.buckets)
    eval_loader = Loader(
        eval_src,
        encode,
        local_batch,
        buckets=config.buckets,
        shuffle=False,
        num_epochs=1,
        drop_remainder=False,
    )

    # Model, optimizer, mesh.
    mcfg = model_config(config, len(tokenizer))
    model = Transformer(mcfg, rngs=nnx.Rngs(config.seed))
    graphdef, state = nnx.split(model)
    num_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))
    tx, schedule = make_optimizer(config)
    mesh = make_mesh()
    state = jax.device_put(state, replicated(mesh))
    opt_state = jax.device_put(tx.init(state), replicated(mesh))
    train_step, eval_step = make_steps(graphdef, tx, PAD_ID)

    # Resume.
    mngr = _checkpoint_manager(workdir / CHECKPOINTS, config)
    step = 0
    if (latest := mngr.latest_step()) is not None:
        state, opt_state, meta = _restore(mngr, latest, state, opt_state)
        step = int(meta["step"])
        train_loader.restore(meta["loader"])

    start_step = step
    writer = MetricsWriter(  # truncate: rows an interrupted attempt logged after the checkpoint go
        workdir,
        total_steps=config.num_steps,
        initial_step=step,
        enabled=main_process,
        desc="sft",
        truncate=True,
    )
    batches = iter(train_loader)
    pending = []  # device metrics since the last log (fetched every log_every steps: no per-step sync on one
    last = {}  # process; several processes agree on SIGTERM every step, a small host all-gather)
    sigterm = False
    with sigterm_flag() as sigterm_requested:
        while step < config.num_steps:
            tokens, mask = _global_batch(next(batches), mesh)
            state, opt_state, metrics = train_step(state, opt_state, tokens, mask)
            pending.append(metrics)
            step += 1
            final = step == config.num_steps
            save = step % config.checkpoint_every == 0 or final
            sigterm = sigterm_requested()  # every process, every step: they must agree
            # A row at every checkpoint too: the losses since the last row are not checkpointed, so a run
            # resumed from it (checkpoint_every not a multiple of log_every) would average fewer steps.
            if step % config.log_every == 0 or save or sigterm:
                fetched = jax.device_get(pending)
                _check_finite(mngr, writer, step, [{k: m[k] for k in ("loss", "grad_norm")} for m in fetched])
                last = {
                    "train_loss": float(np.mean([m["loss"] for m in fetched])),
                    "grad_norm": float(fetched[-1]["grad_norm"]),
                    "learning_rate": float(schedule(step - 1)),
                }
                writer.write(step, last)
                pending = []
            if step % config.eval_every == 0 or final:
                eval_loader.restore({"epoch": 0, "index": 0})
                evaluated = evaluate(eval_step, state, eval_loader, mesh)
                _check_finite(mngr, writer, step, [evaluated])
                writer.write(step, evaluated)
            if save or sigterm:
                writer.flush()  # the logs of every step the checkpoint covers are on disk first
                _save(mngr, step, state, opt_state, {"step": step, "loader": train_loader.state})
            if sigterm:
                break
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
    if sigterm:
        raise Preempted(f"SIGTERM: saved checkpoint at step {step}; exiting")
    train_time = time.time() - t0

    if start_step == step:  # nothing to train (resumed at the end): evaluate the restored parameters
        eval_loader.restore({"epoch": 0, "index": 0})
        evaluated = evaluate(eval_step, state, eval_loader, mesh)
    results = {
        **evaluated,
        "train_loss_last": last.get("train_loss"),
        "steps": step,
        "num_params": num_params,
        "train_examples": len(train_src),
        "eval_examples": len(eval_src),
        "seed": config.seed,
    }
    model = nnx.merge(graphdef, jax.device_get(state))
    if main_process:
        save_pretrained(model, tokenizer, export_dir)
        results["samples"] = _samples(model, tokenizer, eval_src, config)
        results["wall_time_s"] = round(time.time() - t0, 1)
        results["train_wall_time_s"] = round(train_time, 1)
        atomic_write_json(workdir / "eval.json", results)
    return results


# Settings that do not change what a finished run wrote: where things are, how often it logged, and the run
# length (compared with the steps eval.json records instead: a run extended under a constant learning rate
# keeps its first run_config.json).
_NOT_IN_RESULTS = ("workdir", "data_dir", "manual_dir", "log_every", "eval_every", "checkpoint_every")
_NOT_IN_RESULTS += ("keep_checkpoints", "num_steps")


def finished_run(config: ml_collections.ConfigDict, workdir: Path) -> dict | None:
    """The results (``eval.json``) of the run of ``config`` finished in ``workdir`` — its export written, the
    settings it was started with (``run_config.json``) equal to ``config`` but for where things are and how
    often it logged, ``config.num_steps`` steps trained —, else None. Reads only."""
    if not all((workdir / n).exists() for n in (EXPORT, "eval.json", RUN_CONFIG)):
        return None
    try:
        results = run_settings.read_settings(workdir / "eval.json")
        started = run_settings.flatten(run_settings.read_settings(workdir / RUN_CONFIG))
    except UsageError:
        return None
    now = run_settings.flatten(json.loads(json.dumps(config.to_dict())))
    if run_settings.diffs(started, now, ignore=_NOT_IN_RESULTS) or results.get("steps") != config.num_steps:
        return None
    return results


def summary_text(results: dict, workdir: Path, already_complete: bool = False) -> str:
    """The human summary of a finished run (:func:`~infalign_jax.cli.run_summary`): held-out loss and
    perplexity, and where the outputs are."""
    r = results
    title = f"SFT: {r['steps']} steps, {r['num_params']:,} parameters, {r['train_examples']} train dialogues"
    held_out = f"{r['eval_loss']:.4f} (perplexity {r['eval_perplexity']:.2f}, {r['eval_examples']} dialogues)"
    rows = [("held-out loss", held_out)]
    if r.get("train_loss_last") is not None:
        rows.append(("train loss (last log)", f"{r['train_loss_last']:.4f}"))
    if r.get("wall_time_s") is not None:
        rows.append(("wall time", f"{r['wall_time_s']} s"))
    found = [n + "/" * (workdir / n).is_dir() for n in RUN_OUTPUTS if (workdir / n).exists()]
    return run_summary(title, rows, f"{workdir} ({', '.join(found)})", already_complete=already_complete)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI (see the module docstring). Ends with :func:`summary_text` on stdout; rerun on a finished run
    with the same settings, it prints ``already complete: ...`` and exits 0 without touching the workdir."""
    from absl import flags

    def define(fv):
        flags.DEFINE_string(
            "workdir", None, "output directory (default: the config's workdir)", flag_values=fv
        )
        flags.DEFINE_bool("overwrite", False, "replace a finished run in workdir", flag_values=fv)
        define_distributed_flags(fv)

    config, fv = parse_config_flags(
        argv,
        prog="python -m infalign_jax.sft",
        example="configs/sft_hh_tiny.py",
        define_flags=define,
        description=__doc__,
    )
    initialize_distributed(fv)
    workdir = Path(fv.workdir or config.workdir)
    if not fv.overwrite and (done := finished_run(config, workdir)) is not None:  # nothing to redo
        if jax.process_index() == 0:
            print(summary_text(done, workdir, already_complete=True), flush=True)
        return 0
    from infalign_jax.train import EXIT_NONFINITE, NonFiniteError

    try:
        results = train(config, fv.workdir, fv.overwrite)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except Preempted as e:  # the same command resumes from the checkpoint it saved
        print(str(e), file=sys.stderr)
        return EXIT_PREEMPTED
    if jax.process_index() == 0:
        print(summary_text(results, workdir), flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
