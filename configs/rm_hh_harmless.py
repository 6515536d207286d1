"""Reward model on HH-RLHF harmless-base: frozen all-MiniLM-L6-v2 features + a Bradley–Terry-trained head.

    python -m infalign_jax.train_rm --config configs/rm_hh_harmless.py [--workdir W]
    [--config.train.head_steps=N]

The default runs on 2 CPU cores in minutes: backbone features are computed once and cached in the workdir;
only the head trains. Set ``model.train_layers`` (top encoder layers; -1 = all) and
``train.finetune_steps`` to also fine-tune the encoder (much slower on CPU).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # head initialization, minibatch order and the bootstrap
    c.workdir = "runs/rm_hh_harmless"  # outputs (--workdir overrides it)

    # Data: HH-RLHF preference pairs (the built dataset's train / eval splits).
    c.data = ml_collections.ConfigDict()
    c.data.data_dir = "runs/data"  # built TFDS dataset (built from data.manual_dir if missing)
    c.data.manual_dir = ""  # raw HH-RLHF folder; "" = $INFALIGN_HH_DIR, else the packaged copy
    c.data.max_train_pairs = 0  # 0 = all
    c.data.max_eval_pairs = 0  # held-out pairs scored; 0 = all

    # Model: backbone features of (prompt, reply) -> scalar head = the reward.
    c.model = ml_collections.ConfigDict()
    c.model.backbone = "minilm"  # "minilm" | "decoder"
    c.model.decoder_path = ""  # HF folder for backbone="decoder"
    c.model.features = ("pair_mean", "response_mean")  # one pair pass per (prompt, reply)
    c.model.head_hidden = 0  # 0 = linear head
    c.model.train_layers = 0  # 0 = frozen backbone (cached features); N = top N layers; -1 = all
    c.model.max_prompt_tokens = 64  # most recent prompt tokens (truncated from the left)
    c.model.max_response_tokens = 64  # reply tokens kept
    c.model.length_buckets = (16, 32, 64)  # padded sequence lengths (one compilation each)
    c.model.batch_buckets = (1, 8, 32, 64)  # padded batch sizes (one compilation each)

    # Training: Bradley–Terry loss on (chosen, rejected) pairs.
    c.train = ml_collections.ConfigDict()
    c.train.encode_batch_size = 64  # backbone feature extraction
    c.train.head_steps = 600  # Bradley–Terry (Adam, cosine decay) steps of the head on cached features
    c.train.head_batch_size = 256  # pairs per head step
    c.train.head_learning_rate = 3e-3  # peak Adam learning rate of the head
    c.train.head_l2 = (
        0.01,
        0.1,
        1.0,
        10.0,
    )  # L2 on head kernels; several values -> picked by 5-fold CV on train
    c.train.finetune_steps = 0  # steps with the top `model.train_layers` encoder layers unfrozen
    c.train.finetune_batch_size = 16  # pairs per fine-tuning step
    c.train.finetune_learning_rate = 3e-5  # learning rate while fine-tuning the encoder layers
    c.train.log_every = 20  # steps between metrics.jsonl rows

    # Evaluation: held-out pairwise accuracy.
    c.eval = ml_collections.ConfigDict()
    c.eval.n_boot = 10_000  # bootstrap resamples of its 95% CI
    return c
