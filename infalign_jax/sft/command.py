"""``python -m infalign_jax.sft``: flags and config in, :func:`~infalign_jax.sft.training.train` called, its
summary out (the pipeline and the workdir layout: :mod:`infalign_jax.sft`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import jax

from infalign_jax.cli import (
    define_distributed_flags,
    initialize_distributed,
    parse_config_flags,
    run_summary,
)
from infalign_jax.preemption import EXIT_PREEMPTED, Preempted
from infalign_jax.sft.layout import RUN_OUTPUTS
from infalign_jax.sft.training import train
from infalign_jax.sft.workdir import finished_run


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
    """The CLI (see :mod:`infalign_jax.sft`). Ends with :func:`summary_text` on stdout; rerun on a finished
    run with the same settings, it prints ``already complete: ...`` and exits 0 without touching the
    workdir."""
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
        description=sys.modules[__package__].__doc__,
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
