"""CTRL train-step throughput and per-phase breakdown.

    python benchmarks/ctrl_step.py --config configs/ctrl_bandit.py [--steps 30] [--num_ref K]

Runs the configured task's step (one device unless the config's mesh says otherwise) in three modes measured
in the same run, step by step interleaved: ``phased`` (each phase its own jit, timed: sampling / scoring /
calibration / update), ``fused`` (the whole step as one jit, the production path) and ``fused_nocal`` (the
fused step with the calibration kernel replaced by u = 0.5: the baseline for calibration's marginal cost).
Prints 25th percentiles (robust to other processes on a shared CPU), policy samples/s of the fused step,
and the calibration's cost (the issue's budget: <= 2% of a step at K = 64). ``--num_ref`` overrides K.

    python benchmarks/ctrl_step.py --update-ab [--prompt-len 256 --new-tokens 64 --prompts 8 --samples 8]

A/B of the LM update phase alone (``phase_update``: π forward + backward, π_ref forward, AdamW; needs no
trained artifacts): ``LMPolicy(shared_prompt=True)`` (each prompt run once for its S responses) vs ``False``
(every ``[prompt | response]`` in full), jitted in the same process and timed call by call interleaved, on
the random 8.9M-parameter Llama of ``benchmarks/sampler.py`` (6 layers, hidden 256, FFN 768, 8/4 heads,
vocab 8192, fp32), P prompts of full length, S responses of ``--new-tokens`` real tokens, β 0.04 (k1).
Prints wall and process-CPU medians with [min, max] per path and the median ratio full / shared.
"""

from __future__ import annotations

import argparse
import statistics
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


def update_fixture(args):
    """The update phase's inputs on the benchmark model: ``(model_cfg, tx, cfg, state, batch, samples, scores,
    calib)`` for ``phase_update`` (P = ``args.prompts`` prompts of ``args.prompt_len`` tokens, S =
    ``args.samples`` responses of ``args.new_tokens`` tokens; random weights and tokens of ``args.seed``)."""
    import optax
    from flax import nnx
    from sampler import model_config  # benchmarks/sampler.py (this script's directory is on sys.path)

    from infalign_jax.ctrl.objective import LossConfig
    from infalign_jax.ctrl.train_step import StepConfig, TrainState
    from infalign_jax.ctrl.transforms import parse_transform
    from infalign_jax.models import Transformer

    p, s, t, length = args.prompts, args.samples, args.prompt_len, args.new_tokens
    shape = argparse.Namespace(
        vocab=8192, hidden=256, ffn=768, layers=6, heads=8, kv_heads=4, prompt_len=t, max_new_tokens=length
    )
    model_cfg = model_config(shape)
    params = Transformer(model_cfg, rngs=nnx.Rngs(args.seed)).params()
    ref_params = jax.tree.map(jnp.copy, params)
    tx = optax.adamw(1e-5)
    rng = np.random.default_rng(args.seed)
    batch = {
        "prompt_bt": jnp.asarray(rng.integers(3, model_cfg.vocab_size, (p, t)), jnp.int32),
        "prompt_mask_bt": jnp.ones((p, t), jnp.int32),
    }
    samples = {
        "tokens": jnp.asarray(rng.integers(3, model_cfg.vocab_size, (p, s, length)), jnp.int32),
        "mask": jnp.ones((p, s, length), bool),
    }
    phi_ps = jnp.asarray(rng.uniform(0, 2, (p, s)), jnp.float32)
    scores = {"rewards_ps": phi_ps, "ref_rewards_pk": jnp.zeros((p, 8), jnp.float32)}
    calib = {"phi_ps": phi_ps, "u_ps": phi_ps / 2}
    cfg = StepConfig(transform=parse_transform("exp:4"), loss=LossConfig(beta=0.04), num_samples=s, num_ref=8)
    state = TrainState(
        jnp.int32(0), params, tx.init(params), jnp.zeros(2, jnp.uint32), jnp.int32(0), ref_params, {}
    )
    return model_cfg, tx, cfg, state, batch, samples, scores, calib


def update_ab(args) -> None:
    """The ``--update-ab`` mode (see the module docstring)."""
    from infalign_jax.ctrl.lm import LMPolicy
    from infalign_jax.ctrl.train_step import phase_update

    model_cfg, tx, cfg, state, batch, samples, scores, calib = update_fixture(args)
    p, s, t, length = args.prompts, args.samples, args.prompt_len, args.new_tokens
    params = state.params
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(
        f"update A/B: {n_params / 1e6:.1f}M-parameter Llama, P={p} prompts x S={s} responses, prompt {t} + "
        f"{length} tokens, {jax.devices()[0].platform} ({len(jax.devices())} device(s) visible, 1 used)"
    )
    fns, times = {}, {}
    for shared in (True, False):
        policy = LMPolicy(model_cfg, length, (2,), 0, shared_prompt=shared)
        fn = jax.jit(
            lambda st, pol=policy: phase_update(pol, tx, cfg, st, batch, {"samples": samples}, scores, calib)
        )
        t0 = time.perf_counter()
        _, metrics = jax.block_until_ready(fn(state))
        first = time.perf_counter() - t0
        fns[shared], times[shared] = (fn, float(metrics["loss"])), {"first": first, "wall": [], "cpu": []}
    loss_diff = abs(fns[True][1] - fns[False][1])
    for _ in range(args.repeats):  # interleaved call by call: CPU contention hits both alike
        for shared, (fn, _) in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(state))
            times[shared]["wall"].append(time.perf_counter() - w0)
            times[shared]["cpu"].append(time.process_time() - c0)
    fmt = lambda xs: f"{1e3 * statistics.median(xs):.0f} ms [{1e3 * min(xs):.0f}, {1e3 * max(xs):.0f}]"
    for shared, name in ((True, "shared prompt"), (False, "full (old)")):
        tm = times[shared]
        print(
            f"  {name:14s} wall {fmt(tm['wall'])}  cpu {fmt(tm['cpu'])}  first call {tm['first']:.1f} s "
            f"(median [min, max] of {args.repeats})"
        )
    ratio = lambda k: statistics.median(times[False][k]) / statistics.median(times[True][k])
    print(
        f"  full / shared: wall {ratio('wall'):.2f}x, cpu {ratio('cpu'):.2f}x; "
        f"|loss difference| {loss_diff:.1e}"
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/ctrl_bandit.py")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--num_ref", type=int, default=None, help="K (default: the config's num_ref)")
    ap.add_argument("--update-ab", action="store_true", help="A/B of the LM update: shared prompt vs full")
    ap.add_argument("--prompt-len", type=int, default=256, help="--update-ab: prompt tokens")
    ap.add_argument("--new-tokens", type=int, default=64, help="--update-ab: response tokens")
    ap.add_argument("--prompts", type=int, default=8, help="--update-ab: P")
    ap.add_argument("--samples", type=int, default=8, help="--update-ab: S")
    ap.add_argument("--repeats", type=int, default=7, help="--update-ab: timed calls per path")
    ap.add_argument("--seed", type=int, default=0, help="--update-ab: weights and token seed")
    args = ap.parse_args()
    if args.update_ab:
        return update_ab(args)
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
