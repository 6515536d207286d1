"""``python -m infalign_jax.data.hh``: builds the HH-RLHF TFDS dataset (:mod:`infalign_jax.data.hh_dataset`).

CLI::

    python -m infalign_jax.data.hh --manual-dir DIR --data-dir DIR [--subsets harmless-base] [--skip-bad]

Bad input (a malformed JSON line, missing keys, pairs whose prompts differ) is one ``error:`` line naming the
file and line, exit 2; ``--skip-bad`` skips such lines and reports their counts instead. A rerun whose
dataset is already built from the same inputs and settings rebuilds nothing (``already complete: ...``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from infalign_jax.cli import ArgumentParser, run_main, run_summary
from infalign_jax.data import hh_dataset
from infalign_jax.data.hh_dataset import DEFAULT_SUBSETS, build_hh, finished_build
from infalign_jax.data.hh_text import DEFAULT_EVAL_PERCENT


def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(
        prog="python -m infalign_jax.data.hh", description=hh_dataset.__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--manual-dir",
        default=None,
        help="HH-RLHF directory (<subset>/<split>.jsonl.gz); "
        "default $INFALIGN_HH_DIR, else the copy packaged with infalign_jax (harmless-base test split)",
    )
    ap.add_argument("--data-dir", default="runs/data", help="output TFDS data dir (default runs/data)")
    ap.add_argument(
        "--subsets",
        default=",".join(DEFAULT_SUBSETS),
        help="comma-separated subsets, or 'all' (default harmless-base)",
    )
    ap.add_argument(
        "--eval-percent",
        type=int,
        default=DEFAULT_EVAL_PERCENT,
        help=f"percent of prompts in the eval split (default {DEFAULT_EVAL_PERCENT})",
    )
    ap.add_argument("--skip-bad", action="store_true", help="skip and count bad lines instead of failing")
    args = ap.parse_args(argv)
    subsets = None if args.subsets == "all" else tuple(s for s in args.subsets.split(",") if s)
    settings = (args.manual_dir, args.data_dir, subsets, args.skip_bad, args.eval_percent)
    done = finished_build(*settings)
    path = done or build_hh(*settings)
    report = json.loads((path / "parse_report.json").read_text())
    kept, skipped = report["kept"], report["skipped"]
    title = (
        f"HH-RLHF pairs: train={kept.get('train', 0)} eval={kept.get('eval', 0)} "
        f"skipped={sum(skipped.values())} {skipped or ''}"
    ).rstrip()
    rows = [("subsets", ", ".join(report.get("subsets", ()))), ("source", str(report.get("manual_dir")))]
    print(run_summary(title, rows, path, already_complete=done is not None))
    return 0


def run() -> None:
    """:func:`main` under :func:`~infalign_jax.cli.run_main` (what ``python -m infalign_jax.data.hh``
    runs)."""
    run_main(main)
