"""Peak temporary memory of the CTRL update (XLA's compiled memory analysis; nothing is run or allocated).

    .venv/bin/python benchmarks/ctrl_update_memory.py [--layers 12 --hidden 768 --ffn 3072 --vocab 32000]
        [--prompts 8 --samples 4 --prompt-len 64 --new-tokens 128] [--epochs 1 2]

Compiles ``phase_update`` for an LM policy (a Llama of the given size, AdamW) on abstract arrays and prints
XLA's temp / argument / output sizes per ``ppo_epochs`` value — the number that decides whether a model fits a
device. Measured 2026-11-27 (CPU compiler, defaults, 138M parameters): 11.0 GiB of temporaries at 1 and at 2
epochs; the vjp reuse of the old-log-prob forward at 2 epochs had needed 19.6 GiB (see docs/ctrl.md).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from infalign_jax.ctrl.lm import LMPolicy
from infalign_jax.ctrl.objective import LossConfig
from infalign_jax.ctrl.train_step import StepConfig, TrainState, phase_update
from infalign_jax.ctrl.transforms import parse_transform
from infalign_jax.models import ModelConfig, Transformer


def _update(policy, tx, cfg, state, batch, samples, scores, calib):
    return phase_update(policy, tx, cfg, state, batch, {"samples": samples}, scores, calib)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in [("layers", 12), ("hidden", 768), ("ffn", 3072), ("vocab", 32000), ("prompts", 8)]:
        ap.add_argument(f"--{name}", type=int, default=default)
    for name, default in [("samples", 4), ("prompt-len", 64), ("new-tokens", 128)]:
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--epochs", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    model_cfg = ModelConfig.llama(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.ffn,
        num_layers=args.layers,
        num_heads=args.hidden // 64,
        num_kv_heads=args.hidden // 64,
        head_dim=64,
        max_position_embeddings=args.prompt_len + args.new_tokens,
        tie_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    policy = LMPolicy(model_cfg, max_new_tokens=args.new_tokens, eos_ids=(2,))
    params = jax.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)).params())
    tx = optax.adamw(1e-5)
    sds = jax.ShapeDtypeStruct
    p, s, t, length = args.prompts, args.samples, args.prompt_len, args.new_tokens
    batch = {"prompt_bt": sds((p, t), jnp.int32), "prompt_mask_bt": sds((p, t), jnp.int32)}
    samples = {"tokens": sds((p, s, length), jnp.int32), "mask": sds((p, s, length), jnp.bool_)}
    scores = {"rewards_ps": sds((p, s), jnp.float32), "ref_rewards_pk": sds((p, 8), jnp.float32)}
    calib = {"phi_ps": sds((p, s), jnp.float32), "u_ps": sds((p, s), jnp.float32)}
    opt_state = jax.eval_shape(tx.init, params)
    state = TrainState(
        sds((), jnp.int32), params, opt_state, sds((2,), jnp.uint32), sds((), jnp.int32), params, {}
    )
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    shape = f"{p * s} sequences x ({t} + {length}) tokens"
    print(f"{n_params / 1e6:.1f}M parameters, {shape}, backend {jax.default_backend()}")
    gib = lambda x: f"{x / 2**30:.2f} GiB"
    for epochs in args.epochs:
        cfg = StepConfig(
            transform=parse_transform("exp:4"),
            loss=LossConfig(beta=0.1, kl_mode="k3", clip_eps=0.2),
            num_samples=s,
            num_ref=8,
            ppo_epochs=epochs,
        )
        update = jax.jit(functools.partial(_update, policy, tx, cfg))
        mem = update.lower(state, batch, samples, scores, calib).compile().memory_analysis()
        print(
            f"  ppo_epochs={epochs}: temp {gib(mem.temp_size_in_bytes)}, "
            f"arguments {gib(mem.argument_size_in_bytes)}, outputs {gib(mem.output_size_in_bytes)}"
        )


if __name__ == "__main__":
    main()
