"""The main job: InfAlign end to end on the small embedded default (CPU, about a minute once compiled).

    python -m infalign_jax.main [--procedure bon:4] [--kl 0.3] [--workdir runs/main] [--seed 0] [--steps 300]

1. Theory (paper Sec. 3): for the deployed procedure T and a KL budget, the analytic solver gives the optimal
   transformation Φ*, the best exponential Φ_t and the identity, each with the β that lands on the budget.
2. CTRL (paper Sec. 4, Alg. 1) on the contextual bandit of ``configs/ctrl_bandit.py``: three policies
   trained by the same jitted train step (sampled responses, online reference samples, calibration,
   transform, RLOO policy gradient) with Φ = identity, Φ_t and the tabulated Φ*, and evaluated exactly.
3. Results: ``<workdir>/summary.json``, a table on stdout and ``<workdir>/frontier.png`` (the learned policies
   on the analytic win-rate/KL curves). Each run's checkpoints, metrics and TensorBoard events sit in
   ``<workdir>/<method>/``; rerunning with the same workdir resumes instead of retraining (the settings are
   recorded in ``<workdir>/settings.json``; other settings in the same workdir are refused, exit 2). Paths
   recorded in the workdir are relative to it (Φ* is ``table:phi_star.npz``), so a moved or copied workdir
   resumes too.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import jax

from infalign_jax import config_checks, run_settings
from infalign_jax.analytic import comparison as analytic_comparison
from infalign_jax.analytic.plotting import figure_png_bytes, frontier_figure
from infalign_jax.analytic.solver import DEFAULT_CELLS, as_procedure
from infalign_jax.cli import ArgumentParser, UsageError, load_config_file, run_main, run_summary
from infalign_jax.ctrl.bandit import EVAL_PROCEDURES
from infalign_jax.harness.workdir import ResumeRule, claim
from infalign_jax.io_utils import atomic_write_bytes, atomic_write_json
from infalign_jax.preemption import EXIT_PREEMPTED, Preempted
from infalign_jax.seeds import check_seed
from infalign_jax.train import exponential_spec, train

BANDIT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ctrl_bandit.py"
PHI_STAR = "phi_star.npz"  # Φ* exported for the optimal run, in the workdir (named relative to it)
METHODS = ("identity", "exponential", "optimal")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m infalign_jax.main", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--procedure", default="bon:4", help=f"deployed procedure, one of {sorted(EVAL_PROCEDURES.values())}"
    )
    p.add_argument(
        "--kl", type=float, default=0.3, help="KL(π‖π_ref) budget every method is matched to (default 0.3)"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("runs/main"),
        help="output directory; a rerun with the same settings resumes or reports it complete "
        "(default runs/main)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every CTRL run (default 0)")
    p.add_argument("--steps", type=int, default=300, help="CTRL steps per method (default 300)")
    return p


def _eval_name(spec: str) -> str:
    """The bandit evaluation's name for a procedure spec ('identity' is evaluated as 'standard')."""
    names = {v: k for k, v in EVAL_PROCEDURES.items()}
    if spec not in names:
        raise UsageError(f"--procedure {spec!r}: the bandit evaluates {sorted(names)}; pick one of those")
    return names[spec]


def _method_settings(report: dict, phi_star_path: str | Path) -> dict[str, tuple[str, float]]:
    """method -> (transform spec, β), every β chosen by the solver so the prediction lands on the budget;
    the optimal method's spec is ``table:<phi_star_path>``."""
    point = report["points"][0]
    return {
        "identity": ("identity", point["identity"]["beta"]),
        "exponential": (exponential_spec(point["exponential"]["t"]), point["exponential"]["beta"]),
        "optimal": (f"table:{phi_star_path}", point["optimal"]["beta"]),
    }


# The main job's settings; the run length is --steps, which never changes: the bandit config's cosine
# learning rate is spread over the run, so a run extended from 150 to 300 steps is not a 300-step run.
RESUME_RULE = ResumeRule(length_key="steps", hint="use another --workdir")


def _older_settings(workdir: Path, recorded: dict | None, settings: dict) -> dict | None:
    """The settings of a workdir written by an older version: ``summary.json`` supplies what the record
    lacks (``steps``, recorded before --steps was a setting) or the whole record (written before
    ``settings.json`` existed)."""
    summary_path = workdir / "summary.json"
    if recorded is not None:
        if "steps" not in recorded and summary_path.is_file():
            recorded["steps"] = run_settings.read_settings(summary_path).get("steps", run_settings.MISSING)
        return recorded
    if summary_path.is_file():
        summary = run_settings.read_settings(summary_path)
        return {k: summary.get(k, run_settings.MISSING) for k in settings}
    return None


def run(procedure: str, kl: float, workdir: Path, seed: int, steps: int) -> dict:
    """Runs the three stages; returns the summary written to ``workdir/summary.json``."""
    # Absolute: the CTRL runs below work in the workdir (see there), so a relative one would name another.
    workdir = Path(workdir).resolve()
    spec = as_procedure(procedure).spec
    eval_name = _eval_name(spec)
    config_checks.number(kl, "--kl", gt=0, le=2)
    config_checks.number(steps, "--steps", integer=True, ge=1)
    check_seed(seed, "--seed")  # before the workdir is claimed: a bad seed must not block the corrected rerun
    if not BANDIT_CONFIG.is_file():  # configs/ is not part of a wheel: the main job needs a checkout
        raise UsageError(
            f"{BANDIT_CONFIG} not found: run the main job from a checkout installed with `pip install -e .`"
        )
    # The workdir's settings recorded before anything is written; other settings are refused, nothing
    # touched. A run recorded before --steps was a setting is compared without it: each CTRL run's own check
    # decides about its length.
    settings = {"procedure": spec, "kl_budget": kl, "seed": seed, "steps": steps}
    claim(
        workdir,
        settings,
        rule=RESUME_RULE,
        what="--workdir",
        where=f"--workdir {workdir}",
        older=_older_settings,
        ignore_absent=("steps",),
    )

    # 1. Theory: the three transformations at the budget, and Φ* exported as a table for the trainer.
    report, results = analytic_comparison.analyze(spec, [kl], grid=DEFAULT_CELLS, with_curves=True)
    phi_star = jax.tree.map(lambda x: x[0], results[0])
    phi_star_npz = analytic_comparison.transform_npz_bytes(phi_star, spec, DEFAULT_CELLS)
    atomic_write_bytes(workdir / PHI_STAR, phi_star_npz)

    # 2. CTRL on the bandit, one run per transformation.
    runs = {}
    for method, (transform, beta) in _method_settings(report, PHI_STAR).items():
        config = load_config_file(BANDIT_CONFIG)
        config.transform, config.beta, config.procedure = transform, float(beta), spec
        config.seed, config.num_steps = seed, steps
        print(
            f"[main] CTRL on the bandit: {method} (Φ = {transform.split(':')[0]}, β = {beta:.4f})", flush=True
        )
        # Trained with the workdir as the working directory: the optimal run's transform 'table:phi_star.npz'
        # is relative to it, so the settings its checkpoints record (compared on resume) and summary.json
        # hold no absolute path, and a moved or copied workdir resumes. The workdir passed is absolute.
        with contextlib.chdir(workdir):
            result = train(config, workdir / method)
        runs[method] = {
            "transform": transform,
            "beta": float(beta),
            "kl": result["kl"],
            "win_rate": result["win_rate"][eval_name],
            "predicted_kl": result["predicted"]["kl"],
            "predicted_win_rate": result["predicted"]["win_rate"][eval_name],
            "all_win_rates": result["win_rate"],
        }

    # 3. Results.
    summary = {
        "procedure": spec,
        "kl_budget": kl,
        "seed": seed,
        "steps": steps,
        "analytic": report,
        "ctrl": runs,
    }
    fig = frontier_figure(spec, [kl], grid=DEFAULT_CELLS, results=results)
    ax = fig.axes[0]
    for i, (method, r) in enumerate(runs.items()):
        ax.plot(
            r["kl"], r["win_rate"], "s", mfc="none", mec=f"C{i}", ms=9, mew=2, label=f"CTRL learned: {method}"
        )
    ax.legend(loc="lower right", fontsize=8)
    atomic_write_bytes(workdir / "frontier.png", figure_png_bytes(fig))
    atomic_write_json(workdir / "summary.json", summary)
    return summary


def format_summary(summary: dict) -> str:
    spec, kl = summary["procedure"], summary["kl_budget"]
    lines = [
        f"InfAlign main job: T = {spec}, KL budget {kl}, CTRL on a {summary['steps']}-step contextual bandit",
        f"{'method':>12} | {'transform':>18} {'beta':>7} | {'KL learned':>10} {'predicted':>9} | "
        f"{'W learned':>9} {'predicted':>9}",
    ]
    for method, r in summary["ctrl"].items():
        lines.append(
            f"{method:>12} | {r['transform']:>18} {r['beta']:7.4f} | "
            f"{r['kl']:10.4f} {r['predicted_kl']:9.4f} | {r['win_rate']:9.4f} {r['predicted_win_rate']:9.4f}"
        )
    gain = summary["ctrl"]["exponential"]["win_rate"] - summary["ctrl"]["identity"]["win_rate"]
    lines.append(
        f"calibrate-and-transform (Φ_t) vs calibrated identity at equal KL: {gain:+.4f} win rate under {spec}"
    )
    return "\n".join(lines)


def finished_run(procedure: str, kl: float, workdir: Path, seed: int, steps: int) -> dict | None:
    """The summary (``summary.json``) of the main job finished in ``workdir`` with these settings (its
    figure written, every method trained), else None. Reads only."""
    workdir = Path(workdir)
    if not ((workdir / "summary.json").is_file() and (workdir / "frontier.png").is_file()):
        return None
    try:
        summary = run_settings.read_settings(workdir / "summary.json")
    except UsageError:
        return None
    wanted = {"procedure": as_procedure(procedure).spec, "kl_budget": kl, "seed": seed, "steps": steps}
    if any(summary.get(k) != v for k, v in wanted.items()) or set(summary.get("ctrl", ())) != set(METHODS):
        return None
    return summary


def main(argv=None) -> int:
    """The CLI (see the module docstring). Ends with the per-method table and where the outputs are; a rerun
    of a finished job with the same settings prints ``already complete: ...`` and trains nothing."""
    args = build_parser().parse_args(argv)
    summary = finished_run(args.procedure, args.kl, args.workdir, args.seed, args.steps)
    done = summary is not None
    if not done:
        try:
            summary = run(args.procedure, args.kl, args.workdir, args.seed, args.steps)
        except Preempted as e:  # a checkpoint of the running method was saved: the same command resumes
            print(str(e), file=sys.stderr)
            return EXIT_PREEMPTED
    title, *table = format_summary(summary).splitlines()
    files = ", ".join(("summary.json", "frontier.png", "phi_star.npz", *(f"{m}/" for m in METHODS)))
    print(run_summary(title, lines=table, outputs=f"{args.workdir} ({files})", already_complete=done))
    return 0


if __name__ == "__main__":
    run_main(main)
