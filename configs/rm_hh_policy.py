"""Reward model on the CTRL policy's own tokens: the SFT policy export as decoder backbone + a scalar head.

    python -m infalign_jax.train_rm --config configs/rm_hh_policy.py [--workdir W]

Needs the SFT export (``python -m infalign_jax.sft --config configs/sft_hh_tiny.py``). With
``model.policy_tokens`` the reward model tokenizes HH pairs exactly as the policy sees and writes them
(``<bos>`` + the prompt's last 63 tokens | ``" " + reply + <eos>``), so the CTRL trainer scores policy
samples on their sampled ids inside the jitted step (``hh.reward_scorer = "in_step"`` in
configs/ctrl_hh_harmless.py; no host callback, infalign_jax/ctrl/token_scorer.py).

Training: the head on cached features of the frozen decoder (last real token, final-normed): held-out
pairwise accuracy 0.616 [0.557, 0.675] in 74 s (MiniLM: 0.612 [0.553, 0.671] in 1,614 s, same machine and
day, loaded). ``--config.model.train_layers=-1 --config.train.finetune_steps=150`` then also fine-tunes the
whole decoder + head (lr 5e-5, 16 pairs a step): 0.596 [0.537, 0.655] in 342 s, so the head alone is the
default (docs/ctrl_hh.md).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # head initialization, minibatch order and the bootstrap
    c.workdir = "runs/rm_hh_policy"  # outputs (--workdir overrides it)

    # Data: HH-RLHF preference pairs (the built dataset's train / eval splits).
    c.data = ml_collections.ConfigDict()
    c.data.data_dir = "runs/data"  # built TFDS dataset (built from data.manual_dir if missing)
    c.data.manual_dir = ""  # raw HH-RLHF folder; "" = $INFALIGN_HH_DIR, else the packaged copy
    c.data.max_train_pairs = 0  # 0 = all
    c.data.max_eval_pairs = 0  # held-out pairs scored; 0 = all

    # Model: the SFT policy as decoder backbone, on the policy's tokens.
    c.model = ml_collections.ConfigDict()
    c.model.backbone = "decoder"  # "minilm" | "decoder"
    c.model.decoder_path = "runs/sft_hh_tiny/export"  # the SFT export: the policy's weights and tokenizer
    c.model.policy_tokens = True  # tokenize as the CTRL policy (prompt encoder, reply + <eos>)
    c.model.features = ("pair_mean",)  # unused by the decoder backbone (last-token hidden state)
    c.model.head_hidden = 0  # 0 = linear head
    c.model.train_layers = 0  # 0 = frozen decoder (head only); -1 = whole decoder fine-tuned
    c.model.max_prompt_tokens = 64  # = hh.max_prompt_len of the CTRL config (incl. <bos>)
    c.model.max_response_tokens = 32  # reply tokens kept (incl. <eos>) = the CTRL response budget
    c.model.length_buckets = (32, 64)  # padded sequence lengths (one compilation each)
    c.model.batch_buckets = (1, 8, 32, 64)  # padded batch sizes (one compilation each)

    # Training: Bradley–Terry loss on (chosen, rejected) pairs.
    c.train = ml_collections.ConfigDict()
    c.train.encode_batch_size = 64  # backbone feature extraction
    c.train.head_steps = 600  # Bradley–Terry (Adam, cosine decay) steps of the head on cached features
    c.train.head_batch_size = 256  # pairs per head step
    c.train.head_learning_rate = 3e-3  # peak Adam learning rate of the head
    c.train.head_l2 = (0.01, 0.1, 1.0, 10.0)  # L2 on the head kernel; several -> 5-fold CV on train
    c.train.finetune_steps = 0  # Bradley–Terry steps of decoder + head after the head (needs train_layers=-1)
    c.train.finetune_batch_size = 16  # pairs per fine-tuning step
    c.train.finetune_learning_rate = 5e-5  # AdamW learning rate while fine-tuning the decoder
    c.train.log_every = 20  # steps between metrics.jsonl rows

    # Evaluation: held-out pairwise accuracy.
    c.eval = ml_collections.ConfigDict()
    c.eval.n_boot = 10_000  # bootstrap resamples of its 95% CI
    return c
