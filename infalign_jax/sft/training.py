"""The SFT run: data, tokenizer, model, the training loop with evaluation and checkpoints, export and
``eval.json`` (see :mod:`infalign_jax.sft` for the pipeline and the workdir layout)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx

from infalign_jax.errors import UsageError
from infalign_jax.harness.checkpoint import Checkpointer, barrier
from infalign_jax.harness.loop import training_loop
from infalign_jax.harness.workdir import claim, open_run
from infalign_jax.io_utils import atomic_write_json, check_directory_path
from infalign_jax.sft.checkpoint import ITEM, items, step_mismatch
from infalign_jax.sft.config import check_config
from infalign_jax.sft.layout import CHECKPOINTS, EVAL, EXPORT, RUN_CONFIG, tokenizer_dir
from infalign_jax.sft.model import model_config
from infalign_jax.sft.samples import eval_samples
from infalign_jax.sft.steps import make_steps, optimizer
from infalign_jax.sft.workdir import (
    check_checkpoint_shapes,
    check_resumable,
    clear_run,
    resume_rule,
    settings,
)


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


def _check_finite(ckpt: Checkpointer, step: int, rows: list[dict]) -> None:
    """Stops the run (train.NonFiniteError, exit 1) when a loss or gradient norm since the last check is NaN
    or infinite: before it is logged, checkpointed or exported (the last checkpoint stays the newest; the
    finite rows logged so far are kept when the training loop closes the writer)."""
    from infalign_jax.train import NonFiniteError

    bad = [f"{k}={float(v)}" for row in rows for k, v in row.items() if not np.isfinite(float(v))]
    if bad:
        ckpt.wait()  # an earlier checkpoint still being written completes
        last = ckpt.latest_step()
        raise NonFiniteError(
            f"non-finite SFT values by step {step} ({', '.join(bad[:3])}); stopped without saving — last "
            f"checkpoint: {'none' if last is None else f'step {last}'}"
        )


def train(config: ml_collections.ConfigDict, workdir: str | None = None, overwrite: bool = False) -> dict:
    """Runs SFT; returns (and writes to ``<workdir>/eval.json``) the results. See :mod:`infalign_jax.sft`.

    All inputs are checked first (:class:`UsageError`, nothing written): config values, ``workdir``, the data,
    a given tokenizer, and that a run to resume was started with this model / tokenizer config. Only then does
    ``overwrite`` remove the earlier run (:data:`~infalign_jax.sft.layout.RUN_OUTPUTS`, tokenizer included) to
    start from scratch.
    """
    from infalign_jax.data.encoders import sft_encoder
    from infalign_jax.data.hh import build_or_load, load_hh
    from infalign_jax.data.loader import Loader
    from infalign_jax.data.tokenizer import PAD_ID, load_tokenizer, train_hh_tokenizer
    from infalign_jax.mesh import make_mesh, replicated
    from infalign_jax.metrics_log import MetricsWriter
    from infalign_jax.models import Transformer, save_pretrained

    t0 = time.time()
    check_config(config)
    workdir = Path(workdir or config.workdir)
    check_directory_path(workdir, "workdir")
    check_directory_path(config.data_dir, "data_dir")
    export_dir = workdir / EXPORT
    if export_dir.exists() and not overwrite:
        raise UsageError(
            f"{workdir} already holds a finished export ({export_dir}); "
            "use a new --workdir or pass --overwrite"
        )
    tok_dir = tokenizer_dir(config, workdir)
    if config.tokenizer_path:  # loaded now: a damaged or foreign one fails before anything is written
        load_tokenizer(tok_dir)
    main_process = jax.process_index() == 0

    # Data (built into data_dir if it has none — by process 0 while the others wait: two builders of one
    # shared data_dir would race), then the workdir: resume, or start over with --overwrite.
    if not main_process:
        barrier("infalign_jax.sft: data ready")
    train_src = build_or_load("train", config.data_dir, config.manual_dir or None)
    if main_process:
        barrier("infalign_jax.sft: data ready")
    eval_src = load_hh("eval", config.data_dir)
    if len(train_src) < config.batch_size or len(eval_src) == 0:
        raise UsageError(
            f"the dataset in {config.data_dir} has {len(train_src)} train / {len(eval_src)} eval dialogues: "
            f"need at least batch_size ({config.batch_size}) / 1"
        )
    if overwrite:
        if main_process:
            clear_run(workdir, keep=tok_dir if config.tokenizer_path else None)
        barrier("infalign_jax.sft: earlier run cleared")
    else:
        check_resumable(workdir, config, tok_dir)
    rule = resume_rule(config)
    claim(workdir, settings(config), rule=rule, record=RUN_CONFIG)  # the settings are recorded first
    if not (tok_dir / "tokenizer.json").exists() and main_process:
        train_hh_tokenizer(config.data_dir, tok_dir, config.vocab_size)
    barrier("infalign_jax.sft: workdir and tokenizer ready")  # written by process 0 above
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
    tx, schedule = optimizer(config)
    mesh = make_mesh()
    state = jax.device_put(state, replicated(mesh))
    opt_state = jax.device_put(tx.init(state), replicated(mesh))
    train_step, eval_step = make_steps(graphdef, tx, PAD_ID)

    # Resume from the newest intact checkpoint (a damaged newer one is set aside with a warning).
    check_checkpoint_shapes(workdir, config, state)  # a checkpoint of other shapes is refused, not set aside
    run = open_run(
        workdir,
        settings(config),
        items(state, opt_state),
        rule=rule,
        save_every=config.checkpoint_every,
        max_to_keep=config.keep_checkpoints,
        validate=step_mismatch,
        record=RUN_CONFIG,
        dirname=CHECKPOINTS,
        item=ITEM,
    )
    ckpt, step = run.checkpointer, run.step
    if run.resumed:
        state, opt_state = run.items["params"], run.items["opt"]
        train_loader.restore(run.meta["loader"])

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
    with training_loop(ckpt, writer, config.num_steps) as loop:  # saves; SIGTERM: save, raise Preempted
        while step < config.num_steps:
            tokens, mask = _global_batch(next(batches), mesh)
            state, opt_state, metrics = train_step(state, opt_state, tokens, mask)
            pending.append(metrics)
            step += 1
            save_due = loop.save_due(step)  # every process, every step: they must agree on SIGTERM
            # A row at every checkpoint too: the losses since the last row are not checkpointed, so a run
            # resumed from it (checkpoint_every not a multiple of log_every) would average fewer steps.
            if step % config.log_every == 0 or save_due:
                fetched = jax.device_get(pending)
                _check_finite(ckpt, step, [{k: m[k] for k in ("loss", "grad_norm")} for m in fetched])
                last = {
                    "train_loss": float(np.mean([m["loss"] for m in fetched])),
                    "grad_norm": float(fetched[-1]["grad_norm"]),
                    "learning_rate": float(schedule(step - 1)),
                }
                writer.write(step, last)
                pending = []
            if step % config.eval_every == 0 or step == config.num_steps:
                eval_loader.restore({"epoch": 0, "index": 0})
                evaluated = evaluate(eval_step, state, eval_loader, mesh)
                _check_finite(ckpt, step, [evaluated])
                writer.write(step, evaluated)
            loop.end_step(step, items(state, opt_state), {"step": step, "loader": train_loader.state})
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
        results["samples"] = eval_samples(model, tokenizer, eval_src, config)
        results["wall_time_s"] = round(time.time() - t0, 1)
        results["train_wall_time_s"] = round(train_time, 1)
        atomic_write_json(workdir / EVAL, results)
    return results
