"""infalign_jax: inference-aware alignment of language models in JAX/Flax.

InfAlign (Balashankar et al., 2024, "InfAlign: Inference-aware language model alignment") maximizes the
inference-time win rate W(T(pi) > T(pi_ref)) - beta * KL(pi || pi_ref) for a decoding procedure T such as
best-of-N or worst-of-N. Subpackages:

- ``analytic``: the calibrated-reward theory (Sec. 3): win rate / KL of tilted policies, optimal
  transformations.
- ``models``: decoder-only transformers (Llama / Qwen2 / Gemma 3) and checkpoint import.
- ``sampling``: jitted, vmapped best-of-N sampler.
- ``data``, ``reward``: HH-RLHF via TFDS and Bradley-Terry reward models.
- ``ctrl``: calibrate-and-transform RL (Sec. 4).
"""

__version__ = "0.1.0"
