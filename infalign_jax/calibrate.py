"""Offline calibration table builder (paper Sec. 4, Alg. 1 step 1) for ``reference="offline"`` CTRL.

    python -m infalign_jax.calibrate --config configs/ctrl_hh_harmless.py [--workdir TABLE] [--config.x=..]

For each prompt of the config's prompt set, draws K = ``config.num_ref`` responses from π_ref (the SFT policy)
with the KV-cache sampler, scores them with the reward model — the same jitted sample-and-score functions the
train step uses (:func:`infalign_jax.ctrl.lm.reference_rewards`) — and stores the SORTED rewards [P, K]
keyed by prompt id in the table format of :mod:`infalign_jax.ctrl.table` (default location
``config.hh.table_dir``; ``--workdir`` overrides it: then pass ``--config.hh.table_dir=TABLE`` to train).

Resumable: prompts are processed in fixed chunks of ``hh.calibration_batch_prompts`` (chunk c uses the key
``fold_in(key(seed), c)``) and each chunk is flushed to disk when done, so a rerun skips finished chunks and
ends with the same table as an uninterrupted run. A table built for other settings (policy, reward model,
lengths, seed, K, chunking) is refused. A non-finite reward stops the build with a clear error (exit 2); the
chunk holding it is not stored.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import jax

from infalign_jax import config_checks
from infalign_jax.cli import UsageError, parse_config_flags, run_main, run_summary
from infalign_jax.ctrl.hh import (
    HHComponents,
    chunked_rewards,
    load_components,
    require_artifacts,
    table_meta,
)
from infalign_jax.ctrl.table import CalibrationTableWriter
from infalign_jax.io_utils import check_directory_path
from infalign_jax.seeds import seed_key


def build_table(
    config, table_dir: str | Path | None = None, progress: bool = True, parts: HHComponents | None = None
) -> dict:
    """Builds (or completes) the calibration table; returns a summary dict. ``parts``: already loaded
    components of ``config`` (:func:`~infalign_jax.ctrl.hh.load_components`), e.g. to build several tables."""
    t0 = time.perf_counter()
    table_dir = Path(table_dir or config.hh.table_dir)
    from infalign_jax.train import CONFIG_NUMBERS  # the CTRL config's numeric fields (NaN, sizes, ...)

    config_checks.numbers(config, CONFIG_NUMBERS)
    k, chunk = int(config.num_ref), int(config.hh.calibration_batch_prompts)
    key = jax.random.key_data(seed_key(config.seed))  # checks the seed before anything is written
    check_directory_path(table_dir, "calibration table path")  # before the slow model loading
    require_artifacts(config)
    # Loading validates the config (split, lengths vs the policy's positions, ...) BEFORE the table's
    # meta.json records it: a failed first run must not leave a table that refuses the corrected rerun.
    parts = parts or load_components(config)
    meta = {**table_meta(config), "batch_prompts": chunk}
    writer = CalibrationTableWriter(table_dir, k, meta=meta)
    stale = {key: (writer.meta.get(key), v) for key, v in meta.items() if writer.meta.get(key) != v}
    if stale:
        name, (have, need) = next(iter(stale.items()))
        raise UsageError(
            f"{table_dir} was built with {name}={have!r} but the config has {need!r}; use another --workdir"
        )
    done = writer.done_ids()
    ids = parts.prompts.ids
    n = len(ids)
    todo = [
        c for c in range(-(-n // chunk)) if not done.issuperset(ids[c * chunk : (c + 1) * chunk].tolist())
    ]
    for c in todo:
        if done.intersection(ids[c * chunk : (c + 1) * chunk].tolist()):
            raise UsageError(
                f"{table_dir}: chunk {c} is partly stored — the table was built for another prompt set "
                f"(e.g. an hh.num_prompts that is not a multiple of hh.calibration_batch_prompts={chunk}); "
                "build it in a new directory"
            )
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo) * chunk * k, desc="calibrate", unit="sample", dynamic_ncols=True)
    try:
        for idx, r_pk in chunked_rewards(parts, parts.params, k, chunk, key, todo):
            writer.add(ids[idx], r_pk)  # UsageError on NaN/Inf: nothing of this chunk is stored
            writer.flush()
            if bar is not None:
                bar.update(chunk * k)
    finally:
        if bar is not None:
            bar.close()
    return {
        "table": str(table_dir),
        "prompts": n,
        "k": k,
        "new_prompts": int(sum(min((c + 1) * chunk, n) - c * chunk for c in todo)),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def summary_text(summary: dict) -> str:
    """The human summary of :func:`build_table`'s result (:func:`~infalign_jax.cli.run_summary`); ``already
    complete: ...`` when the table was complete before (no new prompts)."""
    rows = [
        ("prompts added this run", f"{summary['new_prompts']}"),
        ("time", f"{summary['seconds']:.1f} s"),
    ]
    title = f"calibration table: {summary['prompts']} prompts x K = {summary['k']} reference rewards"
    done = summary["new_prompts"] == 0
    return run_summary(title, rows, summary["table"], already_complete=done)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI (see the module docstring); ends with :func:`summary_text` on stdout."""
    from absl import flags

    config, fv = parse_config_flags(
        argv,
        prog="python -m infalign_jax.calibrate",
        example="configs/ctrl_hh_harmless.py",
        define_flags=lambda fv: flags.DEFINE_string(
            "workdir", None, "table directory (default: the config's hh.table_dir)", flag_values=fv
        ),
        description=__doc__,
    )
    if config.get("problem") != "hh" or "hh" not in config:
        raise UsageError(
            f"calibrate builds tables for problem 'hh', the config has {config.get('problem')!r}"
        )
    summary = build_table(config, fv.workdir, progress=bool(config.progress))
    print(summary_text(summary), flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
