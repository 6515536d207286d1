"""google-tunix 0.1.7 side of the peer benchmark (runs in benchmarks/peers/.venvs/tunix; see common.py).

    .venvs/tunix/bin/python tunix_driver.py MODEL_DIR      # then JSON commands on stdin

Loads the project's ``save_pretrained`` output with tunix's own safetensors loader into its Llama3 (θ = 1e6:
tunix ignores ``rope_theta``; the saved model uses 1e6). ``sample``: tunix's ``Sampler`` (strings in, through
a small integer tokenizer; no N argument, so each prompt is repeated N times; EOS disabled with
``eos_tokens=[-1]``). ``rl``: one GRPO step (``advantage_estimator="rloo"``, ``kl_loss_mode="low_var_kl"``,
β = 0.04, AdamW, one update per batch) as tunix's learner runs it — ``_generate_and_compute_advantage``
(rollout, reward, π_ref log-probs, advantages) then ``RLCluster.update_actor`` — with the π_ref forward and
the update timed separately (``ref``, ``update``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


class IntTokenizer:
    """Token ids as decimal words: ``"17 4 9"`` <-> ``[17, 4, 9]``; no BOS (id 0 is falsy for tunix), pad 0,
    EOS -1 (never sampled: EOS disabled)."""

    def encode(self, text, **kw):
        return [int(w) for w in text.split()]

    def decode(self, ids, **kw):
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self):
        return 0

    def eos_id(self):
        return -1

    def pad_id(self):
        return 0


def main() -> None:
    model_dir = Path(sys.argv[1])
    import jax
    import jax.numpy as jnp
    import optax
    import tunix
    from flax import nnx
    from tunix.generate import sampler as sampler_lib
    from tunix.models.llama3 import model as llama_lib
    from tunix.models.llama3 import params as llama_params
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    hf = json.loads((model_dir / "config.json").read_text())
    config = llama_lib.ModelConfig(
        num_layers=hf["num_hidden_layers"],
        vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"],
        num_heads=hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        num_kv_heads=hf["num_key_value_heads"],
        rope_theta=int(common.MODEL["rope_theta"]),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        weight_tying=bool(hf.get("tie_word_embeddings", False)),
    )
    auto = (jax.sharding.AxisType.Auto,) * 2
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=auto)
    load = lambda: llama_params.create_model_from_safe_tensors(
        str(model_dir), config, mesh, dtype=jnp.float32
    )
    model = load()
    tokenizer = IntTokenizer()
    text = lambda rows: [" ".join(map(str, r)) for r in rows]
    samplers, learners = {}, {}

    def cpu_wall(fn):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - t, time.process_time() - c

    def sample(cmd):
        shape = common.SHAPES[cmd["shape"]]
        n, new = cmd["n"], cmd["max_new_tokens"]
        cache = shape.prompt_len + new
        if cache not in samplers:
            cache_config = sampler_lib.CacheConfig(
                cache_size=cache,
                num_layers=config.num_layers,
                num_kv_heads=config.num_kv_heads,
                head_dim=config.head_dim,
            )
            samplers[cache] = sampler_lib.Sampler(model, tokenizer, cache_config)
        prompts = [p for p in text(common.prompt_ids(shape, 0)) for _ in range(n)]  # no N: repeat prompts
        out, wall, cpu = cpu_wall(
            lambda: samplers[cache](
                prompts,
                max_generation_steps=new,
                max_prompt_length=shape.prompt_len,
                eos_tokens=[-1],
                seed=cmd["seed"],
                **common.SAMPLING,
            )
        )
        lengths = {len(t) for t in out.tokens}
        assert lengths == {new}, f"tunix sampled lengths {lengths}, expected {new}"
        return {"wall": wall, "cpu": cpu}

    def reward_fn(prompts, completions, **kw):
        return [common.reward_of_tokens(tokenizer.encode(c)) for c in completions]

    def make_learner(shape):
        s = shape.rl_samples
        rollout = base_rollout.RolloutConfig(
            max_tokens_to_generate=shape.new_tokens,
            max_prompt_length=shape.prompt_len,
            kv_cache_size=shape.prompt_len + shape.new_tokens,
            temperature=1.0,
            top_p=1.0,
            top_k=None,
            eos_tokens=[-1],
        )
        training = rl_cluster_lib.RLTrainingConfig(
            actor_optimizer=optax.adamw(common.LR),
            eval_every_n_steps=10**9,
            max_steps=10**9,
            mini_batch_size=shape.prompts,
            train_micro_batch_size=shape.prompts,
            rollout_micro_batch_size=shape.prompts,
            compute_logps_micro_batch_size=shape.prompts,
        )
        roles = {
            r: mesh
            for r in (rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.REFERENCE, rl_cluster_lib.Role.ROLLOUT)
        }
        cluster_config = rl_cluster_lib.ClusterConfig(
            role_to_mesh=roles,
            rollout_engine="vanilla",
            offload_to_cpu=False,
            training_config=training,
            rollout_config=rollout,
        )
        reference = load()
        graphdef, params = nnx.split(reference)
        actor = nnx.merge(graphdef, jax.tree.map(jnp.copy, params))
        cluster = rl_cluster_lib.RLCluster(
            actor=actor, reference=reference, tokenizer=tokenizer, cluster_config=cluster_config
        )
        algo = grpo_learner.GRPOConfig(
            num_generations=s,
            num_iterations=1,
            beta=common.BETA,
            advantage_estimator="rloo",
            kl_loss_mode="low_var_kl",
        )
        learner = grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=algo, reward_fns=reward_fn)
        # What learner.train() sets from the batch size before its first step (micro batches = the batch).
        learner._rollout_micro_batch_size = shape.prompts
        learner._compute_logps_micro_batch_size = shape.prompts
        timers = {"ref": 0.0}
        ref_fn = cluster.get_ref_per_token_logps

        def timed_ref(*a, **kw):
            t = time.perf_counter()
            out = jax.block_until_ready(ref_fn(*a, **kw))
            timers["ref"] += time.perf_counter() - t
            return out

        cluster.get_ref_per_token_logps = timed_ref
        return learner, cluster, timers

    def rl(cmd):
        shape = common.SHAPES[cmd["shape"]]
        if cmd["algo"] != "grpo":
            raise ValueError(f"tunix runs algo 'grpo', not {cmd['algo']!r}")
        if shape.name not in learners:
            learners[shape.name] = make_learner(shape)
        learner, cluster, timers = learners[shape.name]
        s = shape.rl_samples
        prompts = [p for p in text(common.prompt_ids(shape, cmd["seed"])) for _ in range(s)]
        timers["ref"] = 0.0
        t, c = time.perf_counter(), time.process_time()
        example = learner._generate_and_compute_advantage({"prompts": prompts})
        jax.block_until_ready(example)
        t_upd = time.perf_counter()
        cluster.update_actor([example], None, skip_jit=False)
        jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
        end = time.perf_counter()
        return {
            "wall": end - t,
            "cpu": time.process_time() - c,
            "update": end - t_upd,
            "ref": timers["ref"],
            "update_with_ref": end - t_upd + timers["ref"],
        }

    versions = {"tunix": getattr(tunix, "__version__", "0.1.7"), "jax": jax.__version__}
    common.serve(versions, sample, rl)


if __name__ == "__main__":
    main()
