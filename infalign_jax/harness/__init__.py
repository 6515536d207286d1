"""The run harness every trainer uses (CTRL ``train``, SFT, the reward-model trainer, the main job).

- :mod:`~infalign_jax.harness.optimizer`: the one optimizer (clipping + AdamW + warmup/decay schedule).
- :mod:`~infalign_jax.harness.checkpoint`: Orbax checkpoints of any pytree with SHA-256 digests and the
  damaged-checkpoint fallback.
- :mod:`~infalign_jax.harness.workdir`: claiming a workdir — the settings record, the one resume rule,
  restoring the newest intact checkpoint.
- :mod:`~infalign_jax.harness.loop`: the per-step tail of a training loop (SIGTERM, metrics flush, saves).

Submodules are imported where used (Orbax is slow to import); nothing is re-exported here.
"""
