"""CTRL trainer CLI (paper Sec. 4, Alg. 1) on ml_collections configs.

    python -m infalign_jax.train --config configs/ctrl_bandit.py --workdir W [--config.beta=..
    --config.transform=..]

Rerunning with the same ``--workdir`` resumes from the newest intact checkpoint (a damaged newer one is set
aside with a warning); the run's settings are recorded in ``W/settings.json`` first, and a rerun with other
settings, or one that would overwrite a finished run's outputs, is refused (docs/reliability.md). SIGTERM
saves a checkpoint and exits with status 143. A non-finite reward, loss or gradient stops the run (status 1)
without writing a checkpoint.
Invalid configs fail before anything runs (status 2). Outputs: ``W/metrics.jsonl``, ``W/tb/``,
``W/checkpoints/``, ``W/export/`` when the task defines an export (the LM task: the trained policy in the
transformers layout), and ``W/final_eval.json`` when it defines an evaluation.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
from absl import flags
from jax.experimental import multihost_utils

from infalign_jax import config_checks as cc
from infalign_jax import run_settings
from infalign_jax.analytic.procedures import parse_procedure
from infalign_jax.analytic.solver import best_exponential
from infalign_jax.cli import (
    UsageError,
    define_distributed_flags,
    initialize_distributed,
    parse_config_flags,
    run_main,
    run_summary,
)
from infalign_jax.ctrl import bandit
from infalign_jax.ctrl.calibration import BROADCAST_MAX_K
from infalign_jax.ctrl.checkpoint import step_mismatch, with_items
from infalign_jax.ctrl.objective import LossConfig
from infalign_jax.ctrl.problem import CtrlProblem
from infalign_jax.ctrl.train_step import CtrlTrainer, StepConfig, TrainState
from infalign_jax.ctrl.transforms import Transform, check_transform_for_procedure, parse_transform
from infalign_jax.harness.loop import training_loop
from infalign_jax.harness.optimizer import make_optimizer
from infalign_jax.harness.workdir import ResumeRule, open_run, settings_in_checkpoint
from infalign_jax.io_utils import atomic_write_json, check_directory_path, ensure_writable_dir
from infalign_jax.mesh import DATA, make_mesh
from infalign_jax.metrics_log import MetricsWriter
from infalign_jax.preemption import EXIT_PREEMPTED, Preempted, any_process
from infalign_jax.seeds import seed_key


def _hh_problem(config: ml_collections.ConfigDict, step_cfg: StepConfig) -> CtrlProblem:
    """HH-RLHF with the real SFT policy, sampler and reward model (imported lazily: heavy)."""
    from infalign_jax.ctrl import hh

    return hh.build_problem(config, step_cfg)


# Task builders: config.problem -> builder(config, step_cfg) -> CtrlProblem.
PROBLEMS: dict[str, Callable[[ml_collections.ConfigDict, StepConfig], CtrlProblem]] = {
    "bandit": bandit.build_problem,
    "hh": _hh_problem,
}
EXIT_NONFINITE = 1
# The trained policy, for tasks that define an export (the LM task: the transformers layout).
EXPORT_DIR = "export"


class NonFiniteError(RuntimeError):
    """A step produced a NaN/Inf reward, loss or gradient; nothing of that step was saved."""


def auto_exponential(procedure: str, kl_budget: float) -> tuple[Transform, float]:
    """(exp:t, β) of the best exponential transform for ``procedure`` at KL = ``kl_budget`` (analytic solver,
    paper Sec. 3); t ≈ 0 (e.g. procedure 'identity') gives the identity transform."""
    try:
        point = best_exponential(procedure, float(kl_budget))
    except ValueError as e:
        raise UsageError(f"auto_t: {e}") from e
    return parse_transform(exponential_spec(float(point.t))), float(point.beta)


def exponential_spec(t: float) -> str:
    """The transform spec of the exponential Φ_t: ``exp:<t>``, or ``identity`` for t ≈ 0 (|t| < 1e-3; the
    best t for T = identity, where Φ_t is u itself — ``exp:0`` is not a valid transform)."""
    return "identity" if abs(t) < 1e-3 else f"exp:{t:.6g}"


# Numeric fields checked before any work (config_checks.number bounds): NaN / inf / out-of-range values used
# to run (beta=inf, bandit.ref_scale=nan) or fail at step 2 after a checkpoint was saved (optim.lr=nan).
CONFIG_NUMBERS = (
    ("beta", cc.POSITIVE),
    ("kl_budget", cc.POSITIVE),
    ("clip_eps", dict(ge=0, lt=1)),
    ("num_samples", dict(integer=True, ge=2)),
    ("num_ref", cc.COUNT),
    ("ppo_epochs", cc.COUNT),
    ("num_steps", cc.COUNT),
    ("prompts_per_step", cc.COUNT),
    ("checkpoint_every", dict(integer=True, ge=0)),
    ("max_to_keep", cc.COUNT),  # 0 kept no checkpoint (nothing to resume)
    ("optim.lr", cc.POSITIVE),
    ("optim.warmup_steps", dict(integer=True, ge=0)),  # a negative warmup stretched the decay
    ("optim.end_factor", cc.NON_NEGATIVE),
    ("optim.weight_decay", cc.NON_NEGATIVE),
    ("optim.b1", cc.ADAM_BETA),
    ("optim.b2", cc.ADAM_BETA),
    ("optim.eps", cc.POSITIVE),
    ("optim.max_grad_norm", cc.NON_NEGATIVE),  # 0 disables clipping
    ("mesh.data", dict(integer=True, ge=0)),
    ("mesh.fsdp", cc.COUNT),  # fsdp=0 built a mesh of no devices (then a SIGABRT)
    ("bandit.ref_scale", {}),
    ("bandit.num_contexts", cc.COUNT),
    ("bandit.num_responses", dict(integer=True, ge=2)),
    ("hh.num_prompts", cc.COUNT),
    ("hh.max_prompt_len", dict(integer=True, ge=2)),
    ("hh.max_new_tokens", cc.COUNT),
    ("hh.calibration_batch_prompts", cc.COUNT),
    ("hh.eval_samples", dict(integer=True, ge=0)),
)


def check_step_sizes(config: ml_collections.ConfigDict) -> None:
    """Refuses a config whose largest step array (estimated: float32 [P, S, L] per-token values, [P, K, L]
    reference tokens, int32 [P, S, K] counts of the broadcast calibration kernel) would not fit in memory."""
    p, s, k = int(config.prompts_per_step), int(config.num_samples), int(config.num_ref)
    length = int(config.hh.max_new_tokens) if config.problem == "hh" else 1
    broadcast = config.calibration_method == "broadcast" or (
        config.calibration_method == "auto" and k <= BROADCAST_MAX_K
    )
    arrays = [("[P, S, L] per-token values", 4 * p * s * length)]
    arrays.append(("[P, K, L] references", 4 * p * k * length))
    if broadcast:
        arrays.append(("the [P, S, K] calibration counts", 4 * p * s * k))
    what, nbytes = max(arrays, key=lambda a: a[1])
    sizes = f"prompts_per_step={p}, num_samples={s}, num_ref={k}" + (
        f", hh.max_new_tokens={length}" if config.problem == "hh" else ""
    )
    cc.check_array_bytes(what, nbytes, sizes)


def step_config(config: ml_collections.ConfigDict) -> StepConfig:
    """Validates the config and builds the static step configuration (UsageError on any problem)."""
    parse_procedure(config.procedure)
    seed_key(config.seed)  # a seed outside [0, 2**32) would silently collide with another
    cc.numbers(config, CONFIG_NUMBERS)
    check_step_sizes(config)
    beta = float(config.beta)
    if config.auto_t:
        transform, beta = auto_exponential(config.procedure, config.kl_budget)
    else:
        transform = parse_transform(config.transform)
    check_transform_for_procedure(transform, config.procedure)
    cfg = StepConfig(
        transform=transform,
        loss=LossConfig(
            beta=beta,
            kl_mode=config.kl_mode,
            clip_eps=float(config.clip_eps) or None,
            loss_norm=config.loss_norm,
        ),
        num_samples=int(config.num_samples),
        num_ref=int(config.num_ref),
        reference=config.reference,
        ppo_epochs=int(config.ppo_epochs),
        calibration_method=config.calibration_method,
    )
    cfg.validate()
    if config.problem not in PROBLEMS:
        raise UsageError(f"unknown problem {config.problem!r}; expected one of {sorted(PROBLEMS)}")
    if config.step_mode not in ("phased", "fused"):
        raise UsageError(f"step_mode must be 'phased' or 'fused', got {config.step_mode!r}")
    return cfg


# Config keys (or sections) a resumed run may change: run length (only under a constant learning rate, see
# resume_rule) and bookkeeping, execution choices that give the same numbers up to float rounding (the
# mesh — checkpoints restore onto any mesh; reductions then run in another order, ~1e-6 —, phased vs fused
# steps, the calibration kernel, the shared-prompt log-probs), and the bandit's fault injection (tests resume
# a clean run with a NaN reward switched on).
RESUMABLE_KEYS = ("num_steps", "checkpoint_every", "max_to_keep", "progress", "mesh", "step_mode")
RESUMABLE_KEYS += ("calibration_method", "bandit.nan_response", "shared_prompt")

# What a run writes into its workdir besides the settings record: a workdir holding any of them is a run's;
# the last two mark a finished run.
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tb", "final_eval.json", EXPORT_DIR)
FINISHED = ("final_eval.json", EXPORT_DIR)


def resume_rule(config: ml_collections.ConfigDict) -> ResumeRule:
    """The settings a rerun of ``config`` in the same workdir may change (:data:`RESUMABLE_KEYS`):
    ``num_steps`` only under a constant learning rate."""
    schedule = config.optim.schedule
    return ResumeRule(
        resumable=RESUMABLE_KEYS,
        # The decay of a cosine / linear schedule is spread over num_steps: continuing a 200-step run to 400
        # steps would give neither the 200-step nor the 400-step run (its lr already decayed), yet be reported
        # as the latter. Under a constant lr (after warmup) the extended run equals one of the longer length.
        extendable=schedule == "constant",
        length_note=(
            f"; with optim.schedule {schedule!r} the learning rate of every step depends on num_steps"
        ),
        hint="use another workdir (only runs with optim.schedule='constant' may be extended)"
        if schedule != "constant"
        else "use another workdir",
    )


def _settings(config: ml_collections.ConfigDict) -> dict:
    """The config as the JSON it is recorded as (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict()))


def _open_run(workdir: Path, config: ml_collections.ConfigDict, state: TrainState):
    """Claims ``workdir`` for the run of ``config`` (:func:`infalign_jax.harness.workdir.open_run`: the
    settings record, the resume rule, refusals, the newest intact checkpoint): ``(checkpointer, state)``
    with the restored state, or ``state`` itself for a new run. A workdir of an older version without the
    record is checked against its newest checkpoint's config."""
    run = open_run(
        workdir,
        _settings(config),
        state.checkpoint_items(),
        rule=resume_rule(config),
        save_every=config.checkpoint_every,
        max_to_keep=config.max_to_keep,
        outputs=RUN_OUTPUTS,
        finished=FINISHED,
        older=settings_in_checkpoint("config"),
        validate=step_mismatch,
    )
    return run.checkpointer, with_items(state, run.items) if run.resumed else state


def _mesh(config):
    fsdp = int(config.mesh.fsdp)
    data = int(config.mesh.data) or None
    n = len(jax.devices()) if data is None else data * fsdp
    if n > len(jax.devices()):
        raise UsageError(f"mesh data={data} x fsdp={fsdp} needs {n} devices, have {len(jax.devices())}")
    if jax.process_count() > 1 and n != len(jax.devices()):
        # jax.devices()[:n] would leave other processes' devices out of the mesh: they then hold no shard of
        # the batch and fail (put_global ValueError / a collective timeout).
        raise UsageError(
            f"a {jax.process_count()}-process run needs a mesh over all {len(jax.devices())} devices, got "
            f"mesh data={data} x fsdp={fsdp}: set --config.mesh.data=0 (all devices)"
        )
    try:
        mesh = make_mesh(data, fsdp, jax.devices()[:n])
    except ValueError as e:
        raise UsageError(str(e)) from e
    if config.prompts_per_step % mesh.shape[DATA]:
        raise UsageError(
            f"prompts_per_step={config.prompts_per_step} must be divisible by the mesh's data axis "
            f"({mesh.shape[DATA]} devices): the prompt batch is sharded over it"
        )
    return mesh


def host_tree(tree):
    """Gathers a (possibly sharded, possibly multi-process) pytree to host numpy on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    return multihost_utils.process_allgather(tree, tiled=True)


def optimizer(config: ml_collections.ConfigDict, cfg: StepConfig) -> optax.GradientTransformation:
    """The run's optax optimizer from ``config.optim`` (its schedule in train steps of ``cfg.ppo_epochs``
    updates each)."""
    o = config.optim
    return make_optimizer(
        o.lr,
        config.num_steps,
        o.warmup_steps,
        o.schedule,
        o.end_factor,
        o.weight_decay,
        o.b1,
        o.b2,
        float(o.get("eps", 1e-8)),
        max_grad_norm=float(o.max_grad_norm) or None,
        updates_per_step=cfg.ppo_epochs,
    )


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> dict | None:
    """Runs (or resumes) a CTRL run in ``workdir``; returns the final evaluation (or None)."""
    cfg = step_config(config)
    workdir = check_directory_path(workdir, "workdir")  # a file in the way: one error, not an Orbax traceback
    problem = PROBLEMS[config.problem](config, cfg)
    trainer = CtrlTrainer(problem.policy, problem.scorer, cfg, optimizer(config, cfg), _mesh(config))
    state = trainer.init_state(problem.params, problem.ref_params, problem.env, config.seed)
    ensure_writable_dir(workdir)  # all inputs checked: the first write
    ckpt, state = _open_run(workdir, config, state)
    start = int(state.step)
    main_proc = jax.process_index() == 0
    writer = MetricsWriter(  # truncate: rows an interrupted attempt logged after its last checkpoint go
        workdir,
        config.num_steps,
        initial_step=start,
        enabled=main_proc,
        progress=config.progress,
        truncate=True,
    )
    meta = {"config": config.to_dict()}
    step_fn = trainer.phased_step if config.step_mode == "phased" else trainer.train_step

    times = []
    with training_loop(ckpt, writer, config.num_steps) as loop:
        while int(state.step) < config.num_steps:
            step = int(state.step) + 1
            batch = trainer.shard_batch(problem.batch(int(state.data_pos)))
            t0 = time.perf_counter()
            state, metrics = step_fn(state, batch, trainer.step_rng(state))
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            m.setdefault("time/step", time.perf_counter() - t0)
            if m["finite"] != 1.0:
                raise NonFiniteError(
                    f"non-finite reward, loss or gradient at step {step} (raw reward mean "
                    f"{m['reward/raw_mean']}, loss {m['loss']}); stopped without saving — last "
                    f"checkpoint: step {ckpt.latest_step()}"
                )
            writer.write(step, m)
            times.append({k: v for k, v in m.items() if k.startswith("time/")})
            loop.end_step(step, state.checkpoint_items(), meta)
    result = None
    written = workdir / "final_eval.json"
    # A finished run rerun keeps what it wrote (its step times included), redoing only a lost export. All
    # processes take the same branch: host_tree below is a collective.
    stored = _read_json(written) if start == config.num_steps and written.is_file() else None
    keep = not any_process(stored is None)
    redo_export = any_process(problem.export is not None and not (workdir / EXPORT_DIR).is_dir())
    if keep and not redo_export:
        return stored
    if problem.export is None and problem.final_eval is None:
        return None
    host_params = host_tree(state.params)
    if problem.export is not None and main_proc:  # before final_eval.json: that one marks a finished run
        problem.export(host_params, workdir / EXPORT_DIR)
    if keep:
        return stored
    if problem.final_eval is not None:
        result = problem.final_eval(host_params)
        if times[1:]:
            result["time_ms"] = {k[5:]: 1e3 * float(np.median([t[k] for t in times[1:]])) for k in times[1]}
        result.update({"steps": int(state.step), "transform": cfg.transform.spec, "beta": cfg.loss.beta})
        if main_proc:
            atomic_write_json(written, result)
    return result


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None if it is unreadable."""
    try:
        return run_settings.read_settings(path)
    except UsageError:
        return None


def _define_flags(fv) -> None:
    """The trainer's flags besides ``--config`` (see :func:`~infalign_jax.cli.parse_config_flags`)."""
    flags.DEFINE_string("workdir", None, "Run directory (resumed if it holds checkpoints).", flag_values=fv)
    define_distributed_flags(fv)


def _outputs_state(workdir: Path) -> tuple:
    """What a rerun that trains a step or writes a result changes (logs and results: size and mtime; the
    export's presence); None if no run has logged anything in ``workdir`` yet."""
    if not (workdir / "metrics.jsonl").is_file():
        return None
    files = [workdir / n for n in ("metrics.jsonl", "final_eval.json")]
    stats = [(p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None for p in files]
    return (*stats, (workdir / EXPORT_DIR).is_dir())


def summary_text(config, workdir: Path, result: dict | None, already_complete: bool = False) -> str:
    """The human summary of a finished run (:func:`~infalign_jax.cli.run_summary`): KL and win rates of
    ``final_eval.json`` (the bandit: exact, beside the analytic prediction; the LM task: the calibrated win
    rate over π_ref and mean rewards of fresh samples), and where the outputs are."""
    result = result or {}
    predicted = result.get("predicted", {})
    rows = []
    if "kl" in result:
        note = f" (analytic optimum {predicted['kl']:.4f})" if "kl" in predicted else ""
        rows.append(("KL(π‖π_ref)", f"{result['kl']:.4f}{note}"))
    for name, w in result.get("win_rate", {}).items():
        p = predicted.get("win_rate", {}).get(name)
        note = f" (analytic optimum {p:.4f})" if p is not None else ""
        rows.append((f"win rate {name}", f"{w:.4f}{note}"))
    if ev := result.get("eval"):
        n = f"{ev['samples_per_prompt']} samples x {ev['prompts']} prompts"
        rows.append(("calibrated win rate vs π_ref", f"{ev['u_mean']:.4f} (mean u, {n})"))
        rows.append(("reward mean", f"{ev['reward_mean']:.4f} (π_ref {ev['ref_reward_mean']:.4f})"))
    if (step_ms := result.get("time_ms", {}).get("step")) is not None:
        rows.append(("step time (median)", f"{step_ms:.1f} ms"))
    transform, beta = result.get("transform", config.transform), float(result.get("beta", config.beta))
    title = f"CTRL {config.problem}: {config.num_steps} steps, transform {transform}, β = {beta:.4g}"
    names = ("final_eval.json", "metrics.jsonl", "tb", "checkpoints", EXPORT_DIR)
    found = [n + "/" * (workdir / n).is_dir() for n in names if (workdir / n).exists()]
    return run_summary(title, rows, f"{workdir} ({', '.join(found)})", already_complete=already_complete)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m infalign_jax.train --config FILE --workdir DIR [--config.key=value ...]``; ``argv``
    excludes the program name (None: ``sys.argv[1:]``). Ends with :func:`summary_text` on stdout
    (``already complete: ...`` when the run in the workdir was finished: nothing is trained or written)."""
    config, fv = parse_config_flags(
        argv,
        prog="python -m infalign_jax.train",
        example="configs/ctrl_bandit.py",
        define_flags=_define_flags,
        description=__doc__,
    )
    if not fv.workdir:
        raise UsageError("--workdir is required")
    initialize_distributed(fv)
    workdir = Path(fv.workdir)
    before = _outputs_state(workdir)
    try:
        result = train(config, workdir)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except Preempted as e:
        print(str(e), file=sys.stderr)
        return EXIT_PREEMPTED
    if jax.process_index() == 0:
        done = before is not None and _outputs_state(workdir) == before
        print(summary_text(config, workdir, result, already_complete=done), flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
