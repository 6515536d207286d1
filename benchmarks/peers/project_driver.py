"""The project's side of the peer benchmark (runs in the project's .venv; see common.py).

    .venv/bin/python benchmarks/peers/project_driver.py MODEL_DIR      # then JSON commands on stdin

Loads the saved model with :func:`infalign_jax.models.from_pretrained`. ``sample``: the project's
:class:`~infalign_jax.sampling.Sampler` (each prompt prefilled once for its N samples; EOS disabled with
``eos_ids=()``). ``rl``: one CTRL step through the project's public config and trainer API, as
``python -m infalign_jax.train`` and ``benchmarks/ctrl_step.py`` build it: ``configs/ctrl_hh_harmless.py``
(the LM task's config) with the benchmark's overrides (β 0.04, ``kl_mode`` k1/k3, S, P, lr; its AdamW,
clipping, offline reference and step mode otherwise), ``step_config`` / ``optimizer`` / ``CtrlTrainer``,
the step the config's ``step_mode`` selects (``phased`` gives the update phase's own wall time,
``time/update``: π forward + backward, π_ref forward, AdamW). The policy is
:class:`~infalign_jax.ctrl.lm.LMPolicy` on the loaded model (temperature 1, no EOS); the scorer is the
benchmark's reward (fraction of even token ids) as a jitted function, so no reward model runs on any side.
``algo`` ``k1``/``k3`` use the config's default update path; ``k1/full``, ``k3/full`` force
``shared_prompt=False`` (when the config has that flag).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "ctrl_hh_harmless.py"
NUM_REF = 64  # K: offline reference rewards per prompt (the config's table width)


def shared_prompt_default() -> bool | None:
    """The config's ``shared_prompt`` (None when the project has no such flag)."""
    from infalign_jax.cli import load_config_file
    from infalign_jax.ctrl.lm import LMPolicy

    has_field = any(f.name == "shared_prompt" for f in dataclasses.fields(LMPolicy))
    config = load_config_file(CONFIG)
    return bool(config.get("shared_prompt", True)) if has_field else None


def main() -> None:
    model_dir = Path(sys.argv[1])
    import jax
    import jax.numpy as jnp
    import numpy as np

    from infalign_jax.cli import load_config_file
    from infalign_jax.ctrl.lm import LMPolicy
    from infalign_jax.ctrl.train_step import CtrlTrainer
    from infalign_jax.models import from_pretrained
    from infalign_jax.sampling import Sampler, SamplingConfig
    from infalign_jax.train import _mesh, optimizer, step_config

    model, _ = from_pretrained(model_dir)
    shared_default = shared_prompt_default()
    samplers, trainers = {}, {}

    def sample(cmd):
        shape = common.SHAPES[cmd["shape"]]
        n, new = cmd["n"], cmd["max_new_tokens"]
        if shape.name not in samplers:
            samplers[shape.name] = Sampler(model, eos_ids=(), pad_id=0, length_buckets=(shape.prompt_len,))
        t, c = time.perf_counter(), time.process_time()
        out = samplers[shape.name].sample(
            common.prompt_ids(shape, 0),
            n=n,
            max_new_tokens=new,
            seed=cmd["seed"],
            config=SamplingConfig(**common.SAMPLING),
        )
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        assert out.lengths.min() == new, "a sequence stopped early"
        return {"wall": wall, "cpu": cpu}

    def scorer(env, batch, samples):
        even = (samples["tokens"] % 2 == 0) & samples["mask"]
        return jnp.sum(even, -1) / jnp.maximum(jnp.sum(samples["mask"], -1), 1)

    def make_trainer(algo, shape):
        kl_mode, _, path = algo.partition("/")
        config = load_config_file(CONFIG)
        config.kl_mode, config.beta, config.num_samples = kl_mode, common.BETA, shape.rl_samples
        config.prompts_per_step, config.num_ref, config.reference = shape.prompts, NUM_REF, "offline"
        config.optim.lr, config.num_steps, config.auto_t = common.LR, 10**6, False
        config.mesh.data, config.mesh.fsdp = 1, 1
        cfg = step_config(config)
        kw = {}
        if shared_default is not None:
            kw["shared_prompt"] = shared_default if path != "full" else False
        elif path == "full":
            raise ValueError("this project has no shared_prompt flag: 'full' is its only path")
        policy = LMPolicy(model.config, shape.new_tokens, eos_ids=(), pad_id=0, **kw)
        trainer = CtrlTrainer(policy, scorer, cfg, optimizer(config, cfg), _mesh(config))
        params = model.params()
        state = trainer.init_state(params, jax.tree.map(jnp.copy, params), {}, config.seed)
        step = trainer.phased_step if config.step_mode == "phased" else trainer.train_step
        info = {"step_mode": config.step_mode, "shared_prompt": kw.get("shared_prompt")}
        return [trainer, state, step, info]

    def rl(cmd):
        shape = common.SHAPES[cmd["shape"]]
        key = (cmd["algo"], shape.name)
        if key not in trainers:
            trainers[key] = make_trainer(cmd["algo"], shape)
        trainer, state, step, info = trainers[key]
        rng = np.random.default_rng(cmd["seed"])
        batch = {
            "prompt_bt": np.asarray(common.prompt_ids(shape, cmd["seed"]), np.int32),
            "prompt_mask_bt": np.ones((shape.prompts, shape.prompt_len), np.int32),
            "ref_rewards_pk": rng.uniform(0, 1, (shape.prompts, NUM_REF)).astype(np.float32),
        }
        t, c = time.perf_counter(), time.process_time()
        batch = trainer.shard_batch(batch)
        state, metrics = step(state, batch, trainer.step_rng(state))
        metrics = jax.device_get(metrics)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        trainers[key][1] = state
        if float(metrics["finite"]) != 1.0:
            raise RuntimeError("the CTRL step was not finite")
        out = {"wall": wall, "cpu": cpu, **info}
        if "time/update" in metrics:
            out["update"] = float(metrics["time/update"])
        return out

    versions = {"jax": jax.__version__, "shared_prompt_default": shared_default}
    common.serve(versions, sample, rl)


if __name__ == "__main__":
    main()
