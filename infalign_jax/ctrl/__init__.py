"""CTRL: calibrate-and-transform reinforcement learning (paper Sec. 4, Alg. 1). See docs/ctrl.md.

Modules: ``calibration`` (u from reference rewards), ``table`` (offline calibration table), ``transforms``
(Φ specs), ``objective`` (KL-regularized policy-gradient loss), ``problem`` (the policy / scorer protocols and
:class:`~infalign_jax.ctrl.problem.CtrlProblem`), ``sharding`` (placing pytrees on the mesh), ``train_step``
(the jitted, sharded step and :class:`~infalign_jax.ctrl.train_step.CtrlTrainer`), ``checkpoint`` (Orbax),
``bandit`` (validation task), ``lm`` / ``hh`` (the language-model task).
"""
