"""CTRL train-step throughput and per-phase breakdown.

    python benchmarks/ctrl_step.py --config configs/ctrl_bandit.py [--steps 30] [--num_ref K]

Runs the configured task's step (one device unless the config's mesh says otherwise) in three modes measured
in the same run, step by step interleaved: ``phased`` (each phase its own jit, timed: sampling / scoring /
calibration / update), ``fused`` (the whole step as one jit, the production path) and ``fused_nocal`` (the
fused step with the calibration kernel replaced by u = 0.5: the baseline for calibration's marginal cost).
Prints 25th percentiles (robust to other processes on a shared CPU), policy samples/s of the fused step,
and the calibration's cost (the issue's budget: <= 2% of a step at K = 64). ``--num_ref`` overrides K.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from infalign_jax.cli import load_config_file
from infalign_jax.ctrl import train_step
from infalign_jax.ctrl.train_step import CtrlTrainer
from infalign_jax.train import PROBLEMS, _mesh, optimizer, step_config


def _no_calibration(rewards_ps, ref_sorted_pk, method):
    return 0.5 + 0.0 * rewards_ps + 0.0 * jnp.sum(ref_sorted_pk, axis=1, keepdims=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/ctrl_bandit.py")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--num_ref", type=int, default=None, help="K (default: the config's num_ref)")
    args = ap.parse_args()
    config = load_config_file(args.config)
    if args.num_ref is not None:
        config.num_ref = args.num_ref
    cfg = step_config(config)
    problem = PROBLEMS[config.problem](config, cfg)
    tx = optimizer(config, cfg)  # as the trainer builds it (its clipping setting included)
    real_calibrate = train_step.calibrate
    runs = {}
    for mode in ("phased", "fused", "fused_nocal"):
        # fused_nocal: the fused step with the calibration kernel replaced by u = 0.5 (reference rewards stay
        # live so XLA cannot drop the reference sampling): the counterfactual for calibration's marginal cost.
        train_step.calibrate = real_calibrate if mode != "fused_nocal" else _no_calibration
        trainer = CtrlTrainer(problem.policy, problem.scorer, cfg, tx, _mesh(config))
        state = trainer.init_state(problem.params, problem.ref_params, problem.env, config.seed)
        step = trainer.phased_step if mode == "phased" else trainer.train_step
        # Compile NOW, while calibrate is patched: jit traces at the first call (until 2026-11-27 that call
        # came after the patch was undone, so fused_nocal silently measured the real calibration).
        batch = trainer.shard_batch(problem.batch(0))
        state, _ = jax.block_until_ready(step(state, batch, trainer.step_rng(state)))  # state is donated
        runs[mode] = [trainer, state, step, []]
    train_step.calibrate = real_calibrate
    for i in range(args.steps + 2):  # modes interleaved step by step so CPU contention hits all alike
        for run in runs.values():
            trainer, state, step, times = run
            batch = trainer.shard_batch(problem.batch(i))
            t0 = time.perf_counter()
            state, metrics = step(state, batch, trainer.step_rng(state))
            metrics = jax.device_get(metrics)
            dt = time.perf_counter() - t0
            run[1] = state
            if i >= 2:  # skip compilation
                times.append({"time/step": dt, **{k: v for k, v in metrics.items() if k.startswith("time/")}})
    # 25th percentile: robust to other processes competing for the CPU.
    results = {
        mode: {k: 1e3 * float(np.percentile([t[k] for t in run[3]], 25)) for k in run[3][0]}
        for mode, run in runs.items()
    }
    p, s, k = config.prompts_per_step, config.num_samples, config.num_ref
    ph, fu = results["phased"], results["fused"]
    print(
        f"task={config.problem} P={p} S={s} K={k} devices={len(jax.devices())} ({jax.devices()[0].platform})"
    )
    print("phased (ms, 25th percentile): " + ", ".join(f"{n[5:]}={v:.3f}" for n, v in ph.items()))
    print(
        f"fused step: {fu['time/step']:.3f} ms  -> {p * s / fu['time/step'] * 1e3:.0f} policy samples/s "
        f"(phased/fused = {ph['time/step'] / fu['time/step']:.2f}x)"
    )
    share_phased = 100 * ph["time/calibration"] / ph["time/step"]
    marginal = fu["time/step"] - results["fused_nocal"]["time/step"]
    print(
        f"calibration at K={k}: {share_phased:.2f}% of the phased step; marginal cost in the fused step "
        f"{marginal:.3f} ms = {100 * marginal / fu['time/step']:.2f}%"
    )


if __name__ == "__main__":
    main()
