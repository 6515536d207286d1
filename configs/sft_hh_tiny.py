"""SFT of the embedded default policy on HH-RLHF chosen dialogues (CPU, minutes).

python -m infalign_jax.sft --config configs/sft_hh_tiny.py [--config.num_steps=50] [--workdir runs/x]
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # model initialization and data order
    c.workdir = "runs/sft_hh_tiny"  # outputs (--workdir overrides it)

    # Data: the TFDS dataset (built from manual_dir, default the packaged HH copy, if data_dir has none yet).
    c.data_dir = "runs/data"  # built TFDS dataset (built there from manual_dir if missing)
    c.manual_dir = ""  # "" = $INFALIGN_HH_DIR, else the HH-RLHF copy packaged with infalign_jax
    c.max_len = 128  # tokens per dialogue: <bos> + prompt tail + reply (+ <eos>)
    c.max_prompt_len = 64  # prompt context (incl. <bos>) kept from the left-truncated dialogue
    c.buckets = (64, 96, 128)  # padded sequence lengths (one compilation each)

    # Byte-level BPE trained on the train split (written to <workdir>/tokenizer unless a path is given).
    c.tokenizer_path = ""  # "" = train one into <workdir>/tokenizer; else a tokenizer directory
    c.vocab_size = 4096  # vocabulary of the trained tokenizer (unused with tokenizer_path)

    # Llama-style decoder, 2.4M parameters (0.8M of them the tied embedding).
    c.model = ml_collections.ConfigDict()
    c.model.arch = "llama"  # llama | qwen2 | gemma3 layer layout
    c.model.hidden_size = 192  # model width
    c.model.intermediate_size = 512  # MLP hidden width
    c.model.num_layers = 4  # decoder blocks
    c.model.num_heads = 3  # query heads
    c.model.num_kv_heads = 1  # key/value heads (grouped-query attention)
    c.model.head_dim = 64  # width of one attention head
    c.model.rope_theta = 10000.0  # RoPE base frequency

    # Optimization: AdamW, linear warmup then cosine decay, global-norm clipping.
    c.batch_size = 16  # global batch (split over processes and the mesh's data axis)
    c.num_steps = 400  # ~3 epochs of the 2,057 train dialogues
    c.learning_rate = 2e-3  # peak AdamW learning rate
    c.warmup_steps = 40  # linear warmup steps
    c.end_lr_fraction = 0.1  # final learning rate as a fraction of the peak (1.0: constant)
    c.weight_decay = 0.1  # AdamW decoupled weight decay
    c.b1 = 0.9  # Adam β1
    c.b2 = 0.95  # Adam β2
    c.grad_clip = 1.0  # global-norm gradient clipping

    # Logging, evaluation and checkpoints (each also at the last step).
    c.log_every = 10  # steps between train-loss rows in metrics.jsonl
    c.eval_every = 100  # steps between held-out evaluations
    c.checkpoint_every = 100  # steps between Orbax checkpoints
    c.keep_checkpoints = 2  # checkpoints kept

    # Samples written to eval.json after training (greedy and temperature sampling on held-out prompts).
    c.num_samples = 4  # held-out prompts sampled into eval.json (0: none)
    c.sample_max_new_tokens = 48  # reply length budget of the samples
    c.sample_temperature = 0.8  # temperature of the non-greedy sample
    c.sample_top_p = 0.95  # nucleus (top-p) of the non-greedy sample
    return c
