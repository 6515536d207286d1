"""SFT of the embedded default policy on HH-RLHF chosen dialogues (CPU, minutes).

python -m infalign_jax.sft --config configs/sft_hh_tiny.py [--config.num_steps=50] [--workdir runs/x]
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.workdir = "runs/sft_hh_tiny"

    # Data: the TFDS dataset (built from manual_dir, default the shared HH copy, if data_dir has none yet).
    c.data_dir = "runs/data"
    c.manual_dir = ""  # "" = $INFALIGN_HH_DIR or ../shared/data/hh-rlhf
    c.max_len = 128  # tokens per dialogue: <bos> + prompt tail + reply (+ <eos>)
    c.max_prompt_len = 64  # prompt context (incl. <bos>) kept from the left-truncated dialogue
    c.buckets = (64, 96, 128)

    # Byte-level BPE trained on the train split (written to <workdir>/tokenizer unless a path is given).
    c.tokenizer_path = ""
    c.vocab_size = 4096

    # Llama-style decoder, 2.4M parameters (0.8M of them the tied embedding).
    c.model = ml_collections.ConfigDict()
    c.model.arch = "llama"
    c.model.hidden_size = 192
    c.model.intermediate_size = 512
    c.model.num_layers = 4
    c.model.num_heads = 3
    c.model.num_kv_heads = 1
    c.model.head_dim = 64
    c.model.rope_theta = 10000.0

    # Optimization: AdamW, linear warmup then cosine decay, global-norm clipping.
    c.batch_size = 16  # global batch (split over processes and the mesh's data axis)
    c.num_steps = 400  # ~3 epochs of the 2,057 train dialogues
    c.learning_rate = 2e-3
    c.warmup_steps = 40
    c.end_lr_fraction = 0.1
    c.weight_decay = 0.1
    c.b1 = 0.9
    c.b2 = 0.95
    c.grad_clip = 1.0

    c.log_every = 10
    c.eval_every = 100
    c.checkpoint_every = 100
    c.keep_checkpoints = 2

    # Samples written to eval.json after training (greedy and temperature sampling on held-out prompts).
    c.num_samples = 4
    c.sample_max_new_tokens = 48
    c.sample_temperature = 0.8
    c.sample_top_p = 0.95
    return c
