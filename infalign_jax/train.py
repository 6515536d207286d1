"""CTRL trainer CLI (paper Sec. 4, Alg. 1) on ml_collections configs.

    python -m infalign_jax.train --config configs/ctrl_bandit.py --workdir W [--config.beta=..
    --config.transform=..]

Rerunning with the same ``--workdir`` resumes from the latest checkpoint. SIGTERM saves a checkpoint and exits
with status 143. A non-finite reward, loss or gradient stops the run (status 1) without writing a checkpoint.
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
from absl import flags
from jax.experimental import multihost_utils

from infalign_jax import run_settings
from infalign_jax.analytic.procedures import parse_procedure
from infalign_jax.analytic.solver import best_exponential
from infalign_jax.cli import (
    UsageError,
    define_distributed_flags,
    initialize_distributed,
    parse_config_flags,
    run_main,
)
from infalign_jax.ctrl import bandit
from infalign_jax.ctrl.checkpoint import RunCheckpointer
from infalign_jax.ctrl.objective import LossConfig
from infalign_jax.ctrl.train_step import CtrlProblem, CtrlTrainer, StepConfig, make_optimizer
from infalign_jax.ctrl.transforms import Transform, check_transform_for_procedure, parse_transform
from infalign_jax.io_utils import atomic_write_json, check_directory_path, ensure_writable_dir
from infalign_jax.mesh import DATA, make_mesh
from infalign_jax.metrics_log import MetricsWriter
from infalign_jax.preemption import EXIT_PREEMPTED, Preempted, any_process, sigterm_flag
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
    t = float(point.t)
    transform = parse_transform("identity" if abs(t) < 1e-3 else f"exp:{t:.6g}")
    return transform, float(point.beta)


def step_config(config: ml_collections.ConfigDict) -> StepConfig:
    """Validates the config and builds the static step configuration (UsageError on any problem)."""
    parse_procedure(config.procedure)
    seed_key(config.seed)  # a seed outside [0, 2**32) would silently collide with another
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
    if config.num_steps < 1 or config.prompts_per_step < 1:
        raise UsageError("num_steps and prompts_per_step must be >= 1")
    integers = (("checkpoint_every", 0), ("max_to_keep", 1), ("optim.warmup_steps", 0))
    integers += (("mesh.data", 0), ("mesh.fsdp", 1))  # fsdp=0 built a mesh of no devices (then a SIGABRT)
    for name, least in integers:
        value = config[name] if "." not in name else config[name.split(".")[0]][name.split(".")[1]]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            # max_to_keep 0 kept no checkpoint (nothing to resume); a negative warmup stretched the decay
            raise UsageError(f"{name} must be an integer >= {least}, got {value!r}")
    if config.step_mode not in ("phased", "fused"):
        raise UsageError(f"step_mode must be 'phased' or 'fused', got {config.step_mode!r}")
    return cfg


# Config keys (or sections) a resumed run may change: run length (only under a constant learning rate, see
# check_resumable) and bookkeeping, execution choices that give the same numbers up to float rounding (the
# mesh — checkpoints restore onto any mesh; reductions then run in another order, ~1e-6 —, phased vs fused
# steps, the calibration kernel), and the bandit's fault injection (tests resume a clean run with a NaN reward
# switched on).
RESUMABLE_KEYS = ("num_steps", "checkpoint_every", "max_to_keep", "progress", "mesh", "step_mode")
RESUMABLE_KEYS += ("calibration_method", "bandit.nan_response")


def check_resumable(saved: dict | None, config: ml_collections.ConfigDict, workdir: Path) -> None:
    """UsageError if the run saved in ``workdir`` (its checkpoint's config, ``saved``) was made with settings
    other than ``config`` (outside RESUMABLE_KEYS): resuming would report the old policy under the new
    settings. A checkpoint without a saved config is not checked."""
    if not saved:
        return
    old, new = run_settings.flatten(saved), run_settings.flatten(json.loads(json.dumps(config.to_dict())))
    if changed := run_settings.diffs(old, new, ignore=RESUMABLE_KEYS):
        raise UsageError(
            f"{workdir} holds a run with other settings ({run_settings.summary(changed)}); resuming it would "
            f"mix them — use another workdir (a resumed run may change only {', '.join(RESUMABLE_KEYS)})"
        )
    if old.get("num_steps") != new["num_steps"] and config.optim.schedule != "constant":
        # The decay of a cosine / linear schedule is spread over num_steps: continuing a 200-step run to 400
        # steps would give neither the 200-step nor the 400-step run (its lr already decayed), yet be reported
        # as the latter. Under a constant lr (after warmup) the extended run equals one of the longer length.
        raise UsageError(
            f"{workdir} holds a run of num_steps {old.get('num_steps')}; with optim.schedule "
            f"{config.optim.schedule!r} the learning rate of every step depends on num_steps, so resuming it "
            f"with num_steps {new['num_steps']} would not give a {new['num_steps']}-step run — use another "
            "workdir (only runs with optim.schedule='constant' may be extended)"
        )


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


def optimizer(config: ml_collections.ConfigDict, cfg: StepConfig):
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
    ckpt = RunCheckpointer(workdir, config.checkpoint_every, config.max_to_keep)
    if ckpt.latest_step() is not None:
        check_resumable(ckpt.meta().get("config"), config, workdir)
        if ckpt.latest_step() > config.num_steps:  # resuming would report the longer run as this one
            raise UsageError(
                f"{workdir} holds a run trained for {ckpt.latest_step()} steps, more than num_steps "
                f"{config.num_steps}; use another workdir (or num_steps >= {ckpt.latest_step()})"
            )
        state = ckpt.restore(state)
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
    try:
        with sigterm_flag() as sigterm_requested:
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
                sigterm = sigterm_requested()  # every process, every step: they must agree
                if ckpt.should_save(step) or step == config.num_steps or sigterm:
                    writer.flush()  # the logs of every step the checkpoint covers are on disk first
                    ckpt.save(state, meta)
                if sigterm:
                    ckpt.wait()
                    raise Preempted(f"SIGTERM: saved checkpoint at step {step}; exiting")
    finally:
        writer.close()
        ckpt.close()
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m infalign_jax.train --config FILE --workdir DIR [--config.key=value ...]``; ``argv``
    excludes the program name (None: ``sys.argv[1:]``)."""
    config, fv = parse_config_flags(
        argv,
        prog="python -m infalign_jax.train",
        example="configs/ctrl_bandit.py",
        define_flags=_define_flags,
    )
    if not fv.workdir:
        raise UsageError("--workdir is required")
    initialize_distributed(fv)
    try:
        train(config, fv.workdir)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except Preempted as e:
        print(str(e), file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    run_main(main)
