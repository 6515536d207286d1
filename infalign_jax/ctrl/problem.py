"""What a CTRL task plugs into the trainer (paper Sec. 4, Alg. 1): the policy and scorer protocols and
:class:`CtrlProblem`, the bundle a task builder (``ctrl.bandit``, ``ctrl.hh``) hands to the CLI.

A *policy* is any object with

    policy.sample(params, batch, rng, num_samples) -> samples          # pytree, leaves [P, S, ...]
    policy.logprobs(params, batch, samples) -> (logp_psl, mask_psl)    # per response token, [P, S, L] each

(a tabular bandit policy has L = 1; a transformer policy gives the log-probabilities of the response tokens
given the prompt, with a response mask) and optionally ``policy.param_specs()``: a ``PartitionSpec`` per
leaf of its params from the model's sharding annotations (:func:`infalign_jax.ctrl.sharding.param_shardings`).
A *scorer* is ``scorer(env, batch, samples) -> rewards_ps`` where ``env`` is a frozen pytree (reward-model
parameters, a bandit's reward table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jax

PyTree = Any


class Policy(Protocol):
    def sample(self, params: PyTree, batch: PyTree, rng: jax.Array, num_samples: int) -> PyTree: ...

    def logprobs(self, params: PyTree, batch: PyTree, samples: PyTree) -> tuple[jax.Array, jax.Array]: ...


Scorer = Callable[[PyTree, PyTree, PyTree], jax.Array]


@dataclass(frozen=True, eq=False)
class CtrlProblem:
    """What the CLI needs to train on a task: the pluggable policy and scorer, initial host pytrees, the data.

    ``batch(position)`` returns the host (numpy) batch at a data position, identical on every process;
    ``final_eval(host_params)`` (optional) returns a JSON-able dict written to ``<workdir>/final_eval.json``;
    ``export(host_params, path)`` (optional) writes the trained policy in a form users take away (the LM task:
    a transformers-layout directory, ``<workdir>/export``), called once the last step is done.
    """

    policy: Policy
    scorer: Scorer
    params: PyTree
    ref_params: PyTree
    env: PyTree
    batch: Callable[[int], PyTree]
    final_eval: Callable[[PyTree], dict] | None = None
    export: Callable[[PyTree, Path], None] | None = None
