"""CTRL on a contextual bandit: validation of the trainer against the analytic optimum (docs/ctrl.md).

    python -m infalign_jax.train --config configs/ctrl_bandit.py --workdir /tmp/bandit \
        --config.transform=exp:8 --config.beta=0.397

Defaults: identity transform at β = 0.338 (predicted KL 0.30). Matched-KL (0.30) settings used by the tests:
identity β = 0.338, exp:8 β = 0.3971 (best-of-4), exp:-5 β = 0.1474 (worst-of-4).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.problem = "bandit"  # task: "bandit" (this contextual bandit) | "hh" (configs/ctrl_hh_harmless.py)
    c.seed = 0  # run seed: the PRNG key of every step's policy and reference samples

    # CTRL objective (paper Sec. 4, Alg. 1).
    c.transform = "identity"  # identity | log | exp:T | table:PATH | lsc | raw
    c.procedure = "identity"  # target inference-time procedure: sign checks for exp:T and auto_t
    c.auto_t = False  # pick exp:t (and β) from the analytic solver for `procedure` at KL = kl_budget
    c.kl_budget = 0.3  # KL(π‖π_ref) budget at which auto_t picks (t, β)
    c.beta = 0.338  # KL penalty weight β (0.338: the identity optimum at KL 0.3)
    c.num_samples = 1024  # S policy samples per prompt (>= 2)
    c.num_ref = 256  # K reference samples per prompt
    c.reference = "online"  # K samples of π_ref drawn in the step (offline tables: problem "hh" only)
    c.calibration_method = "auto"  # calibration kernel: auto | searchsorted | broadcast (same numbers)
    c.kl_mode = "k1"  # k1: sequence KL in the reward; k3: per-token KL in the loss
    c.clip_eps = 0.0  # PPO ratio clipping epsilon; 0 disables
    c.ppo_epochs = 1  # policy updates per batch of samples (> 1 needs clip_eps)
    c.loss_norm = "sequence"  # sequence | token

    # Optimizer: global-norm clipping + AdamW with schedule.
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 0.1  # peak learning rate
    c.optim.schedule = "cosine"  # cosine | linear | constant (after warmup)
    c.optim.warmup_steps = 0  # linear warmup from 0, in train steps
    c.optim.end_factor = 0.0  # final learning rate as a fraction of lr (cosine / linear)
    c.optim.weight_decay = 0.0  # AdamW decoupled weight decay
    c.optim.b1 = 0.9  # Adam β1
    c.optim.b2 = 0.999  # Adam β2
    c.optim.max_grad_norm = 0.0  # 0 disables clipping

    # Run length and batch.
    c.num_steps = 300  # train steps
    c.prompts_per_step = 16  # P contexts per step (divisible by the mesh's data axis)

    # The bandit itself.
    c.bandit = ml_collections.ConfigDict()
    c.bandit.num_contexts = 16  # contexts (the prompts)
    c.bandit.num_responses = 1000  # responses per context (rewards drawn from N(0, 1))
    c.bandit.ref_scale = 1.0  # π_ref = softmax(ref_scale · N(0, 1)) per context
    c.bandit.seed = 0  # seed of the rewards and π_ref logits
    c.bandit.nan_response = -1  # fault injection for tests: this response's reward is NaN (-1: off)

    # Mesh and run control.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1  # 0: all devices not used by fsdp
    c.mesh.fsdp = 1  # devices on the fsdp axis (parameter sharding)
    c.step_mode = "phased"  # phased: per-phase timings every step; fused: the whole step as one jit
    c.checkpoint_every = 100  # steps between checkpoints (0: the final step only)
    c.max_to_keep = 2  # checkpoints kept
    c.progress = True  # tqdm progress bar on stderr
    return c
