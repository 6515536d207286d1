"""The HH-harmless worst-of-N experiment, one command (issue 16 §3; paper Sec. 5; docs/experiment_hh.md).

    python -m infalign_jax.experiments.hh_harmless --workdir runs/hh_harmless [--scale toy|full] [--seed S]
        [--results DIR]

Stages, each run through its own CLI's library entry point in this process and skipped by that CLI's own
"already complete" rule when its outputs are there (nothing of their logic is copied here):

1. ``data``      ``python -m infalign_jax.data.hh``        -> W/data
2. ``sft``       ``python -m infalign_jax.sft``            -> W/sft/export (π_ref and the initial policy)
3. ``rm_policy`` ``python -m infalign_jax.train_rm`` (configs/rm_hh_policy.py): the TRAINING reward, on the
   policy's own tokens (scored inside the jitted step)
4. ``rm_minilm`` ``python -m infalign_jax.train_rm`` (configs/rm_hh_harmless.py): the independent JUDGE,
   never optimized against (issue 16 §2)
5. ``table``     ``python -m infalign_jax.calibrate``      -> W/table (K reference rewards per train prompt)
   ``plan``      W/plan.json: the solver's t for won:4 / bon:4 and every method's β (:func:`make_plan`)
6. ``ctrl/<policy>`` ``python -m infalign_jax.train`` for every method × β (same prompts, steps, optimizer,
   seed; only ``transform``/``beta`` — and the procedure the transform is checked against — differ)
7. ``eval``      ``infalign_jax.evaluate.command.run_evaluation`` on the eval split, every policy + π_ref,
   both judges, procedures won:4 (primary), won:2, won:8, bon:4, standard
8. ``results``   summary.json (matched-KL comparisons, :mod:`infalign_jax.experiments.matched_kl`),
   frontier figure, results.md
9. ``diagnose``  diagnostics.json + diagnostics.md (:mod:`infalign_jax.experiments.diagnostics`): why the
   methods do or do not differ — judge agreement, theory at the measured KL, training curves, prompts needed

W/experiment.json records scale and seed (a rerun with others is refused, exit 2); W/plan.json the solver's t
and every method's β (made once, after the table); W/stages.json every stage's wall time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from infalign_jax.cli import ArgumentParser, UsageError, run_main
from infalign_jax.io_utils import atomic_write_json, ensure_writable_dir
from infalign_jax.seeds import check_seed

REPO = Path(__file__).resolve().parents[2]
METHODS = ("raw", "identity", "ctrl_won", "ctrl_bon")
PROCEDURES = ("won:4", "won:2", "won:8", "bon:4", "standard")  # won:4 is the primary one
JUDGES = ("train_rm", "minilm")  # the training reward model, the independent judge
ALREADY = "already complete"


@dataclasses.dataclass(frozen=True)
class Scale:
    """Every size of one scale (docs/experiment_hh.md explains each choice)."""

    sft: dict  # config overrides of configs/sft_hh_tiny.py
    rm_policy: dict  # ... of configs/rm_hh_policy.py
    rm_minilm: dict  # ... of configs/rm_hh_harmless.py
    ctrl: dict  # ... of configs/ctrl_hh_harmless.py (calibrate and every CTRL run)
    kl_targets: tuple[float, ...]  # the analytic optimum's KL at each β (one β per target and method)
    solver_kl: float  # the KL at which the solver picks t for won:4 / bon:4
    eval_prompts: int
    eval_samples: int  # M per prompt and side (>= 8 for won:8)
    eval_bootstrap: int
    compare_kls: tuple[float, ...]  # matched-KL comparison points (those inside both methods' ranges)


FULL = Scale(
    sft={},  # the documented SFT protocol: 400 steps, 2.4M-parameter Llama, 4,096-token BPE
    rm_policy={},  # frozen SFT decoder + linear head, all train pairs
    rm_minilm={},  # frozen MiniLM + linear head, all train pairs
    ctrl={
        "num_steps": 100,
        "prompts_per_step": 8,
        "num_samples": 4,
        "num_ref": 32,
        "hh.num_prompts": 64,
        "hh.max_prompt_len": 64,
        "hh.max_new_tokens": 32,
        "hh.calibration_batch_prompts": 8,
        "hh.eval_samples": 0,
        "checkpoint_every": 25,
        "optim.lr": 1e-4,
    },
    kl_targets=(0.05, 0.15, 0.5),
    solver_kl=0.3,
    eval_prompts=64,
    eval_samples=8,
    eval_bootstrap=2000,
    compare_kls=(0.05, 0.1, 0.2, 0.3, 0.5),
)

TOY = Scale(
    sft={
        "num_steps": 2,
        "vocab_size": 300,
        "max_len": 48,
        "max_prompt_len": 24,
        "buckets": (48,),
        "model.hidden_size": 32,
        "model.intermediate_size": 64,
        "model.num_layers": 1,
        "model.num_heads": 2,
        "model.num_kv_heads": 1,
        "model.head_dim": 16,
        "batch_size": 8,
        "warmup_steps": 1,
        "eval_every": 2,
        "checkpoint_every": 2,
        "num_samples": 0,
    },
    rm_policy={
        "data.max_train_pairs": 48,
        "data.max_eval_pairs": 24,
        "model.max_prompt_tokens": 24,
        "model.max_response_tokens": 8,
        "model.length_buckets": (32,),
        "model.batch_buckets": (8, 32),
        "train.head_steps": 10,
        "train.head_l2": (1.0,),
        "eval.n_boot": 200,
    },
    rm_minilm={
        "data.max_train_pairs": 48,
        "data.max_eval_pairs": 24,
        "model.max_prompt_tokens": 16,
        "model.max_response_tokens": 16,
        "model.length_buckets": (32,),
        "model.batch_buckets": (8, 32),
        "train.head_steps": 10,
        "train.head_l2": (1.0,),
        "eval.n_boot": 200,
    },
    ctrl={
        "num_steps": 2,
        "prompts_per_step": 2,
        "num_samples": 2,
        "num_ref": 8,
        "hh.num_prompts": 4,
        "hh.max_prompt_len": 24,
        "hh.max_new_tokens": 6,
        "hh.calibration_batch_prompts": 4,
        "hh.eval_samples": 0,
        "checkpoint_every": 2,
        "optim.lr": 1e-2,
    },
    kl_targets=(0.1, 0.5),
    solver_kl=0.3,
    eval_prompts=4,
    eval_samples=8,
    eval_bootstrap=200,
    compare_kls=(0.05, 0.1, 0.2, 0.3, 0.5),
)

SCALES = {"toy": TOY, "full": FULL}


# ------------------------------------------------------------------------------------------------ stages
class _Tee(io.TextIOBase):
    """Collects what a CLI prints while still showing it."""

    def __init__(self, out):
        self.out, self.buf = out, io.StringIO()

    def write(self, s):
        self.buf.write(s)
        return self.out.write(s)

    def flush(self):
        self.out.flush()


def _overrides(values: dict) -> list[str]:
    return [f"--config.{k}={v}" for k, v in values.items()]


class _Stages:
    """Runs stages, records each one's wall time in W/stages.json. A stage whose CLI answers ``already
    complete`` keeps the seconds of the run that did the work (``rerun_seconds`` is the check's cost)."""

    def __init__(self, workdir: Path):
        self.path = workdir / "stages.json"
        self.record = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.statuses: dict[str, str] = {}

    def run(self, name: str, fn: Callable[[], str]) -> None:
        print(f"== stage {name}", flush=True)
        t0 = time.perf_counter()
        status = fn()
        seconds = time.perf_counter() - t0
        old = self.record.get(name)
        if status == ALREADY and old is not None:
            old["rerun_seconds"] = seconds
        else:
            self.record[name] = {"seconds": seconds, "status": status}
        self.statuses[name] = status
        atomic_write_json(self.path, self.record)
        print(f"== stage {name}: {status} ({seconds:.1f} s)", flush=True)


class StageFailed(Exception):
    """A stage's CLI returned a non-zero exit status (non-finite loss, preemption: see its own message)."""

    def __init__(self, code: int):
        super().__init__(f"a stage ended with exit status {code}")
        self.code = code


def _cli(main: Callable[[Sequence[str]], int], argv: list[str]) -> str:
    """Runs a CLI's ``main`` in this process; ``already complete`` when it said so, else ``ran``."""
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        code = main(argv)
    if code:
        raise StageFailed(code)
    return ALREADY if ALREADY in tee.buf.getvalue() else "ran"


# --------------------------------------------------------------------------------------------- the plan
def _paths(workdir: Path) -> dict[str, Path]:
    return {
        "data": workdir / "data",
        "sft": workdir / "sft",
        "ref": workdir / "sft" / "export",
        "rm_policy": workdir / "rm_policy",
        "rm_minilm": workdir / "rm_minilm",
        "table": workdir / "table",
        "ctrl": workdir / "ctrl",
        "eval": workdir / "eval",
    }


def _ctrl_common(scale: Scale, paths: dict, seed: int) -> dict:
    return {
        **scale.ctrl,
        "seed": seed,
        "progress": False,
        "hh.policy_path": str(paths["ref"]),
        "hh.rm_workdir": str(paths["rm_policy"]),
        "hh.reward_scorer": "in_step",
        "hh.data_dir": str(paths["data"]),
        "hh.table_dir": str(paths["table"]),
    }


def make_plan(scale: Scale, table_dir: Path) -> dict:
    """Every method's transform, checked procedure and β grid.

    t: the analytic solver's best exponential for won:4 (t < 0) and bon:4 (t > 0) at ``scale.solver_kl``.
    β of a calibrated method (identity, exp:±t): the β at which the analytic KL-regularized optimum of that
    transform has KL = each of ``scale.kl_targets`` (solver ``exponential_at_kl``; identity is t = 0).
    β of ``raw``: the identity's β times std(raw reward)/std(u), std(raw) the pooled within-prompt std of the
    calibration table's π_ref rewards and std(u) = 1/√12 (u is Uniform(0, 1) under π_ref): the raw reward
    divided by this β has the scale of u divided by the identity's β, so to first order (KL ≈ Var(r)/2β²
    for a small tilt) the same KL.
    """
    import numpy as np

    from infalign_jax.analytic import best_exponential, exponential_at_kl
    from infalign_jax.ctrl.table import load_table

    t_won = float(best_exponential("won:4", scale.solver_kl, warn=False).t)
    t_bon = float(best_exponential("bon:4", scale.solver_kl, warn=False).t)
    kls = np.asarray(scale.kl_targets, np.float64)
    beta_id = np.asarray(exponential_at_kl("won:4", 0.0, kls).beta, np.float64).reshape(-1)
    beta_won = np.asarray(exponential_at_kl("won:4", t_won, kls).beta, np.float64).reshape(-1)
    beta_bon = np.asarray(exponential_at_kl("bon:4", t_bon, kls).beta, np.float64).reshape(-1)
    rewards_nk = load_table(table_dir).rewards_nk.astype(np.float64)
    std_raw = float(np.sqrt(rewards_nk.var(axis=1, ddof=1).mean()))
    if not std_raw > 0:
        raise UsageError(f"the calibration table {table_dir} has zero within-prompt reward spread")
    std_u = 1.0 / np.sqrt(12.0)
    methods = {
        "raw": {"transform": "raw", "procedure": "won:4", "betas": beta_id * std_raw / std_u},
        "identity": {"transform": "identity", "procedure": "won:4", "betas": beta_id},
        "ctrl_won": {"transform": f"exp:{t_won:.4f}", "procedure": "won:4", "betas": beta_won},
        "ctrl_bon": {"transform": f"exp:{t_bon:.4f}", "procedure": "bon:4", "betas": beta_bon},
    }
    for m in methods.values():
        m["betas"] = [float(f"{b:.6g}") for b in m["betas"]]
    return {
        "t_won4": t_won,
        "t_bon4": t_bon,
        "solver_kl": scale.solver_kl,
        "kl_targets": list(scale.kl_targets),
        "std_raw_within_prompt": std_raw,
        "methods": methods,
    }


def policy_names(plan: dict) -> list[tuple[str, int, str]]:
    """(method, β index, policy name) of every CTRL run."""
    return [(m, i, f"{m}_b{i}") for m in METHODS for i in range(len(plan["methods"][m]["betas"]))]


# ---------------------------------------------------------------------------------------------- driver
def _claim(workdir: Path, scale_name: str, seed: int) -> None:
    ensure_writable_dir(workdir)
    path = workdir / "experiment.json"
    record = {"experiment": "hh_harmless", "scale": scale_name, "seed": seed}
    if path.exists():
        old = json.loads(path.read_text())
        if old != record:
            raise UsageError(f"{workdir} holds the experiment {old}, not {record}; use another --workdir")
        return
    if any(workdir.iterdir()):
        raise UsageError(f"{workdir} is not empty and holds no experiment.json; use another --workdir")
    atomic_write_json(path, record)


def run_experiment(
    workdir: str | Path, scale_name: str = "full", seed: int = 0, results: str | Path | None = None
) -> dict:
    """Runs (or resumes) every stage; returns ``summary.json``'s content."""
    from infalign_jax import calibrate, sft, train, train_rm
    from infalign_jax.commands import hh_data
    from infalign_jax.evaluate.command import EvalConfig, run_evaluation
    from infalign_jax.experiments import results as results_mod

    if scale_name not in SCALES:
        raise UsageError(f"unknown scale {scale_name!r}; expected one of {', '.join(SCALES)}")
    check_seed(seed)
    scale = SCALES[scale_name]
    workdir = Path(workdir)
    results_dir = (
        Path(results)
        if results is not None
        else (REPO / "results" / "hh_harmless" if scale_name == "full" else workdir / "results")
    )
    _claim(workdir, scale_name, seed)
    paths = _paths(workdir)
    stages = _Stages(workdir)
    cfg = lambda name: str(REPO / "configs" / name)  # noqa: E731

    stages.run("data", lambda: _cli(hh_data.main, ["--data-dir", str(paths["data"])]))
    stages.run(
        "sft",
        lambda: _cli(
            sft.main,
            [f"--config={cfg('sft_hh_tiny.py')}", "--workdir", str(paths["sft"])]
            + _overrides({**scale.sft, "seed": seed, "data_dir": str(paths["data"])}),
        ),
    )
    rm_common = {"seed": seed, "data.data_dir": str(paths["data"])}
    stages.run(
        "rm_policy",
        lambda: _cli(
            train_rm.main,
            [f"--config={cfg('rm_hh_policy.py')}", "--workdir", str(paths["rm_policy"])]
            + _overrides({**scale.rm_policy, **rm_common, "model.decoder_path": str(paths["ref"])}),
        ),
    )
    stages.run(
        "rm_minilm",
        lambda: _cli(
            train_rm.main,
            [f"--config={cfg('rm_hh_harmless.py')}", "--workdir", str(paths["rm_minilm"])]
            + _overrides({**scale.rm_minilm, **rm_common}),
        ),
    )
    common = _ctrl_common(scale, paths, seed)
    stages.run(
        "table",
        lambda: _cli(
            calibrate.main,
            [f"--config={cfg('ctrl_hh_harmless.py')}", "--workdir", str(paths["table"])] + _overrides(common),
        ),
    )
    plan_path = workdir / "plan.json"

    def write_plan() -> str:
        if plan_path.exists():
            return ALREADY
        atomic_write_json(plan_path, make_plan(scale, paths["table"]))
        return "ran"

    stages.run("plan", write_plan)
    plan = json.loads(plan_path.read_text())
    for method, i, name in policy_names(plan):
        m = plan["methods"][method]
        values = {
            **common,
            "transform": m["transform"],
            "procedure": m["procedure"],
            "beta": m["betas"][i],
        }
        stages.run(
            f"ctrl/{name}",
            lambda values=values, name=name: _cli(
                train.main,
                [f"--config={cfg('ctrl_hh_harmless.py')}", "--workdir", str(paths["ctrl"] / name)]
                + _overrides(values),
            ),
        )

    eval_cfg = EvalConfig(
        policies=tuple(
            (name, str(paths["ctrl"] / name / train.EXPORT_DIR)) for _, _, name in policy_names(plan)
        ),
        reference=str(paths["ref"]),
        judges=(("train_rm", str(paths["rm_policy"])), ("minilm", str(paths["rm_minilm"]))),
        samples=scale.eval_samples,
        workdir=str(paths["eval"]),
        procedures=PROCEDURES,
        split="eval",
        seed=seed,
        num_prompts=scale.eval_prompts,
        max_prompt_len=int(scale.ctrl["hh.max_prompt_len"]),
        max_new_tokens=int(scale.ctrl["hh.max_new_tokens"]),
        batch_prompts=min(8, scale.eval_prompts),
        bootstrap=scale.eval_bootstrap,
        data_dir=str(paths["data"]),
    )
    report_box: dict = {}

    def evaluate() -> str:
        done = (paths["eval"] / "eval.json").is_file()
        report_box["report"] = run_evaluation(eval_cfg, progress=False)
        return ALREADY if done else "ran"

    stages.run("eval", evaluate)
    summary_box: dict = {}

    def write_results() -> str:
        summary = results_mod.build_summary(
            report_box["report"],
            plan,
            {"experiment": "hh_harmless", "scale": scale_name, "seed": seed},
            scale.compare_kls,
            {k: v["seconds"] for k, v in stages.record.items()},
        )
        summary_box["summary"] = summary
        return results_mod.write_results(summary, report_box["report"], results_dir)

    stages.run("results", write_results)

    def write_diagnostics() -> str:
        from infalign_jax.experiments import diagnostics

        return diagnostics.write(diagnostics.diagnose(workdir), results_dir)

    stages.run("diagnose", write_diagnostics)
    return summary_box["summary"]


def parse_args(argv: Sequence[str] | None = None):
    p = ArgumentParser(
        prog="python -m infalign_jax.experiments.hh_harmless", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--workdir", required=True, help="every stage's outputs (resumable)")
    p.add_argument("--scale", default="full", choices=tuple(SCALES), help="toy: seconds-scale test sizes")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage")
    p.add_argument(
        "--results",
        default=None,
        help="results dir (default results/hh_harmless for --scale full, WORKDIR/results for toy)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from infalign_jax.commands.compilation_cache import enable_compilation_cache

    a = parse_args(argv)
    enable_compilation_cache()  # later runs (and a resumed one) reuse the stages' compilations
    try:
        summary = run_experiment(a.workdir, a.scale, a.seed, a.results)
    except StageFailed as e:  # its CLI said why; the same command resumes the experiment
        print(f"error: {e}; rerun the same command to resume", file=sys.stderr)
        return e.code
    print(f"-> {len(summary['comparisons'])} matched-KL comparisons in {summary['results_dir']}")
    return 0


if __name__ == "__main__":
    run_main(main)
