"""CTRL smoke run on HH-RLHF harmless prompts with the real components (docs/ctrl_hh.md).

Prerequisites (each a few minutes on CPU; the defaults below point at their outputs):

    python -m infalign_jax.sft --config configs/sft_hh_tiny.py            # π_ref: runs/sft_hh_tiny/export
    python -m infalign_jax.train_rm --config configs/rm_hh_policy.py      # reward: runs/rm_hh_policy
    python -m infalign_jax.calibrate --config configs/ctrl_hh_harmless.py # offline table, K = num_ref

then

    python -m infalign_jax.train --config configs/ctrl_hh_harmless.py --workdir runs/ctrl_hh_harmless

Transform exp:8 targets best-of-4 decoding (paper Sec. 3: exponential Φ with t > 0 for BoN; β = 0.397 puts the
analytic optimum at KL 0.3, see configs/ctrl_bandit.py); ``auto_t=True`` picks (t, β) from the solver instead.
The reward is the policy-token decoder RM scored inside the step (``hh.reward_scorer="in_step"``); the MiniLM
RM (configs/rm_hh_harmless.py) with ``--config.hh.reward_scorer=callback
--config.hh.rm_workdir=runs/rm_hh_harmless`` is the host-callback alternative (docs/ctrl_hh.md).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.problem = "hh"  # task: "hh" (this LM task) | "bandit" (configs/ctrl_bandit.py)
    c.seed = 0  # run seed: the PRNG key of every step's policy and reference samples

    # CTRL objective (paper Sec. 4, Alg. 1).
    c.transform = "exp:8"  # identity | log | exp:T | table:PATH | lsc | raw
    c.procedure = "bon:4"  # target inference-time procedure (sign check of exp:T; auto_t)
    c.auto_t = False  # pick exp:t (and β) from the analytic solver for `procedure` at KL = kl_budget
    c.kl_budget = 0.3  # KL(π‖π_ref) budget at which auto_t picks (t, β)
    c.beta = 0.397  # KL penalty weight β (0.397: the exp:8 optimum at KL 0.3)
    c.num_samples = 4  # S policy samples per prompt
    c.num_ref = 64  # K reference samples per prompt (the offline table's width)
    c.reference = "offline"  # offline: the calibration table; online: K samples of π_ref in every step
    c.calibration_method = "auto"  # calibration kernel: auto | searchsorted | broadcast (same numbers)
    c.kl_mode = "k1"  # k1: sequence KL in the reward; k3: per-token KL in the loss
    c.clip_eps = 0.0  # PPO ratio clipping epsilon; 0 disables
    c.ppo_epochs = 1  # policy updates per batch of samples (> 1 needs clip_eps)
    c.loss_norm = "sequence"  # sequence | token
    # Update log-probs (π fwd+bwd, π_ref fwd) with each prompt run once for its S samples (issue 17); False:
    # every [prompt | response] in full, the old path (same numbers up to float rounding), for A/B.
    c.shared_prompt = True

    # Optimizer: global-norm clipping + AdamW, constant learning rate.
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4  # peak learning rate
    c.optim.schedule = "constant"  # cosine | linear | constant (after warmup)
    c.optim.warmup_steps = 0  # linear warmup from 0, in train steps
    c.optim.end_factor = 1.0  # final learning rate as a fraction of lr (cosine / linear)
    c.optim.weight_decay = 0.0  # AdamW decoupled weight decay
    c.optim.b1 = 0.9  # Adam β1
    c.optim.b2 = 0.999  # Adam β2
    # Adam's eps (1e-8 when absent): at step 1 pi = pi_ref, but the old and reference log-probs differ by
    # roundoff, so prompts whose samples tie in Phi(u) get ~1e-8 gradients that eps = 1e-8 turns into
    # ~lr/2 moves whose sign depends on the mesh; 1e-6 makes such a gradient a ~1% step (measured on a toy
    # HH run, lr 1e-2: params after 1 step on 1 vs 4 devices differ by 6.2e-3 with 1e-8, 1.2e-4 with 1e-6).
    c.optim.eps = 1e-6  # Adam epsilon (1e-8 when absent): roundoff-size gradients make ~1% steps, not ~lr/2
    c.optim.max_grad_norm = 1.0  # global-norm gradient clipping; 0 disables

    # Run length and batch.
    c.num_steps = 4  # train steps
    c.prompts_per_step = 8  # P prompts per step (<= hh.num_prompts; divisible by the data axis)

    # The real components.
    c.hh = ml_collections.ConfigDict()
    c.hh.policy_path = "runs/sft_hh_tiny/export"  # HF export of the SFT run (π_ref and the initial policy)
    c.hh.rm_workdir = "runs/rm_hh_policy"  # train_rm workdir (rm_hh_policy.py; MiniLM: runs/rm_hh_harmless)
    c.hh.reward_scorer = "in_step"  # in_step: policy-token RM in the step | callback: host re-tokenizing
    c.hh.table_dir = (
        "runs/ctrl_hh_harmless_table"  # offline calibration table (python -m infalign_jax.calibrate)
    )
    c.hh.data_dir = "runs/data"  # HH TFDS dataset (built from manual_dir if missing)
    c.hh.manual_dir = ""  # "" = $INFALIGN_HH_DIR, else the HH-RLHF copy packaged with infalign_jax
    c.hh.split = "train"  # HH split the prompts come from (train | eval)
    c.hh.num_prompts = 32  # the first N prompts of the split
    c.hh.max_prompt_len = 64  # policy prompt tokens incl. <bos> (left-truncated), as in SFT
    c.hh.max_new_tokens = 32  # L, response length budget
    c.hh.calibration_batch_prompts = 4  # prompts per jitted sample+score call when building the table
    c.hh.eval_samples = 4  # final_eval.json: samples per prompt of the trained policy (0: no final eval)

    # Mesh and run control.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1  # 0: all devices not used by fsdp
    c.mesh.fsdp = 1  # devices on the fsdp axis (parameter sharding)
    c.step_mode = "phased"  # per-phase timings (sampling / scoring / calibration / update) every step
    c.checkpoint_every = 2  # steps between checkpoints (0: the final step only)
    c.max_to_keep = 2  # checkpoints kept
    c.progress = True  # tqdm progress bar on stderr
    return c
