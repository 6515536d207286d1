"""``python -m infalign_jax.analytic``: optimal vs exponential vs identity transformations at KL budgets.

    python -m infalign_jax.analytic --procedure bon:4 --kl 0.25,0.5,1 [--grid M] [--json] [--plot out.png]
        [--export-transform out.npz] [--beta-for-transform BETA]

Default output is a table; ``--json`` prints exactly one JSON object (see
:func:`~infalign_jax.analytic.comparison.analyze`).
``--export-transform`` writes Φ* at the FIRST requested KL (or, with ``--beta-for-transform``, at that β) as
arrays ``u`` (increasing in [0, 1]) and ``phi`` plus scalars ``procedure``, ``beta``, ``kl`` and ``grid``.
Files are written atomically after everything is computed, so an error never leaves a partial or clobbered
file. Bad input: one line, exit 2. Compiled kernels are kept in a persistent cache (see
:func:`enable_compilation_cache`), so only the first run pays the compile time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np

from infalign_jax.analytic.comparison import analyze, transform_npz_bytes
from infalign_jax.analytic.solver import (
    DEFAULT_CELLS,
    LOG_BETA_RANGE,
    MAX_KL,
    SearchLimitWarning,
    as_procedure,
    bon_policy_point,
    solve_optimal,
)
from infalign_jax.cli import run_main
from infalign_jax.commands.compilation_cache import enable_compilation_cache
from infalign_jax.errors import UsageError
from infalign_jax.io_utils import atomic_write_files


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m infalign_jax.analytic", description=__doc__.split("\n")[0])
    p.add_argument(
        "--procedure",
        default="bon:4",
        help="identity | bon:N | won:N | kth:K,N (K from the lowest) | rejection:Q,N (default bon:4)",
    )
    p.add_argument(
        "--kl", default="0.25,0.5,1", help="comma-separated KL budgets in (0, 4] (default 0.25,0.5,1)"
    )
    p.add_argument("--grid", type=int, default=DEFAULT_CELLS, help=f"grid cells (default {DEFAULT_CELLS})")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object instead of the table")
    p.add_argument("--plot", type=Path, help="write the frontier + Φ* figure (PNG)")
    p.add_argument(
        "--export-transform", type=Path, help="write Φ* on its grid (NPZ: u, phi, procedure, beta, kl)"
    )
    p.add_argument(
        "--beta-for-transform", type=float, help="export Φ* at this β instead of at the first requested KL"
    )
    return p


def parse_kls(text: str) -> list[float]:
    """'0.25,0.5,1' -> [0.25, 0.5, 1.0]; each budget finite and in (0, MAX_KL]."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise UsageError(f"--kl: {part.strip()!r} is not a number (expected e.g. 0.25,0.5,1)") from None
        if not (np.isfinite(value) and 0.0 < value <= MAX_KL):
            raise UsageError(f"--kl: every budget must be in (0, {MAX_KL:g}], got {part.strip()!r}")
        values.append(value)
    return values


def format_table(report, grid: int) -> str:
    lines = [
        f"InfAlign analytic solver (paper Sec. 3): T = {report['procedure']}, grid {grid} cells, "
        "W = W(T(π) ≻ T(π_ref)) with ties ½",
        f"{'KL':>6} | {'optimal W':>10} {'beta':>8} | {'best exp. t':>11} {'W':>9} {'beta':>8} | "
        f"{'identity W':>10} {'beta':>8}",
    ]
    for pt in report["points"]:
        o, e, i = pt["optimal"], pt["exponential"], pt["identity"]
        lines.append(
            f"{pt['kl']:>6.3g} | {o['win_rate']:>10.5f} {o['beta']:>8.4f} | {e['t']:>11.3f} "
            f"{e['win_rate']:>9.5f} {e['beta']:>8.4f} | {i['win_rate']:>10.5f} {i['beta']:>8.4f}"
        )
    refs = ", ".join(
        f"n={n}: KL {bon_policy_point(n)[0]:.3f} W {bon_policy_point(n)[1]:.3f}" for n in (2, 4, 8)
    )
    lines.append(f"BoN-n policy of π_ref (closed form, W under T = identity or BoN): {refs}")
    return "\n".join(lines)


def _check_output(path: Path | None, flag: str, suffix: str) -> None:
    if path is None:
        return
    if path.suffix.lower() != suffix:
        raise UsageError(f"{flag}: expected a {suffix} file name, got {str(path)!r}")
    if path.is_dir():
        raise UsageError(f"{flag}: {str(path)!r} is a directory")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # checked before the computation, not when writing after it
        raise UsageError(f"{flag}: cannot write {str(path)!r}: {str(blocker)!r} is not a directory")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    procedure = as_procedure(args.procedure)
    kls = parse_kls(args.kl)
    _check_output(args.plot, "--plot", ".png")
    _check_output(args.export_transform, "--export-transform", ".npz")
    if args.plot is not None and args.plot == args.export_transform:
        raise UsageError("--plot and --export-transform must be different files")
    if args.beta_for_transform is not None:
        if args.export_transform is None:
            raise UsageError("--beta-for-transform needs --export-transform")
        if not (np.isfinite(args.beta_for_transform) and args.beta_for_transform > 0):
            raise UsageError(f"--beta-for-transform must be a positive number, got {args.beta_for_transform}")
        lo, hi = (math.exp(x) for x in LOG_BETA_RANGE)
        if not lo <= args.beta_for_transform <= hi:
            raise UsageError(
                f"--beta-for-transform must be in [{lo:.0e}, {hi:.0e}], got {args.beta_for_transform}"
            )

    enable_compilation_cache()
    with warnings.catch_warnings(record=True) as caught:  # SearchLimitWarning as one "warning:" line each
        warnings.simplefilter("always", SearchLimitWarning)
        report, results = analyze(procedure, kls, grid=args.grid, with_curves=args.plot is not None)
    for w in caught:
        if issubclass(w.category, SearchLimitWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    opt = results[0]
    outputs = {}
    if args.export_transform is not None:
        if args.beta_for_transform is not None:
            solution = solve_optimal(procedure, args.beta_for_transform, grid=args.grid)
            if not solution.kl <= MAX_KL:  # e.g. bon:4 at β = 1e-9: KL 12.6, beyond what the grid resolves
                raise UsageError(
                    f"--beta-for-transform {args.beta_for_transform:g} gives KL {float(solution.kl):.3g} > "
                    f"{MAX_KL:g}, beyond what the grid resolves; use a larger β"
                )
        else:
            solution = type(opt)(*(x[0] for x in opt))  # the first requested KL
        outputs[args.export_transform] = transform_npz_bytes(solution, procedure.spec, args.grid)
    if args.plot is not None:
        from infalign_jax.analytic.plotting import figure_png_bytes, frontier_figure  # imports matplotlib

        fig = frontier_figure(procedure, kls, grid=args.grid, results=results)
        outputs[args.plot] = figure_png_bytes(fig)
    try:  # everything computed: now write, all or nothing (one failing output leaves the others untouched)
        atomic_write_files(outputs)
    except OSError as e:
        raise UsageError(f"cannot write {e.filename}: {e.strerror or e}") from None
    for path in outputs:
        print(f"wrote {path}", file=sys.stderr)

    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report, args.grid))
    return 0


def run() -> None:
    """:func:`main` under :func:`~infalign_jax.cli.run_main` (what ``python -m infalign_jax.analytic``
    runs)."""
    run_main(main)
