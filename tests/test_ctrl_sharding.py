"""The one parameter-sharding policy (models.sharding.param_shardings) as the CTRL trainer uses it: a model's
annotations where there are any, the largest-divisible-axis heuristic for model-free pytrees."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from infalign_jax.ctrl import bandit
from infalign_jax.ctrl.objective import LossConfig
from infalign_jax.ctrl.train_step import CtrlTrainer, StepConfig
from infalign_jax.ctrl.transforms import parse_transform
from infalign_jax.harness.optimizer import make_optimizer
from infalign_jax.mesh import make_mesh
from infalign_jax.models import Transformer
from infalign_jax.models.config import ModelConfig
from infalign_jax.models.sharding import fsdp_sharding, param_shardings, params_specs, state_shardings

TINY = ModelConfig(
    vocab_size=64, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=8
)


def _specs(shardings) -> dict:
    return {jax.tree_util.keystr(k): s.spec for k, s in jax.tree_util.tree_leaves_with_path(shardings)}


def test_model_free_pytrees_get_the_largest_divisible_axis():
    mesh = make_mesh(2, 4)
    tree = {"a": np.zeros((8, 64)), "b": np.zeros((6, 12)), "c": np.zeros((3, 5)), "d": np.zeros(())}
    got = _specs(param_shardings(tree, mesh))
    # a: 64 on fsdp; b: 12 (the largest, divisible by 4); c: nothing divisible; d: a scalar
    assert got == {"['a']": P(None, "fsdp"), "['b']": P(None, "fsdp"), "['c']": P(), "['d']": P()}
    assert got == _specs(fsdp_sharding(tree, mesh))
    # an nnx model that annotates nothing (the MiniLM reward encoder) is model-free in this sense
    state = jax.tree.map(np.asarray, nnx.state(nnx.Linear(8, 12, rngs=nnx.Rngs(0))))
    assert _specs(param_shardings(state, mesh)) == _specs(fsdp_sharding(state, mesh))
    assert set(_specs(param_shardings(state, mesh)).values()) == {P(None, "fsdp"), P("fsdp")}


def test_transformer_params_follow_their_annotations():
    """The policy's plain params dict with params_specs gets exactly the shardings its nnx state gets from
    the Variables' annotations — not the heuristic's choice (gate [L, D, F]: D on fsdp, not the larger F)."""
    mesh = make_mesh(2, 4)
    model = Transformer(TINY, rngs=nnx.Rngs(0))
    params = jax.tree.map(np.asarray, model.params())
    got = _specs(param_shardings(params, mesh, params_specs(TINY)))
    assert got["['embed']"] == P("fsdp", None)  # vocab 64 on fsdp
    assert got["['layers']['q']"] == P(None, "fsdp", None)  # [2, 16, 16]
    assert got["['layers']['o']"] == P(None, None, "fsdp")
    assert got["['layers']['k']"] == P(None, "fsdp", None)  # [2, 16, 8]
    assert got["['layers']['attn_norm']"] == P(None, None)
    assert _specs(fsdp_sharding(params, mesh))["['layers']['k']"] == P(None, "fsdp", None)
    assert _specs(fsdp_sharding(params, mesh))["['layers']['gate']"] == P(None, None, "fsdp")  # 24 > 16
    assert got["['layers']['gate']"] == P(None, "fsdp", None)
    # the module's own state, its annotations read by the same policy: the same spec per parameter
    by_state = _specs(param_shardings(nnx.state(model), mesh))
    assert by_state == _specs(state_shardings(nnx.state(model), mesh))
    assert by_state["['layers']['gate'].value"] == got["['layers']['gate']"]
    assert len(by_state) == len(got)


class _AnnotatedPolicy(bandit.TabularPolicy):
    def param_specs(self):
        return {"logits": P("fsdp", None)}


def test_trainer_places_params_by_the_policy_annotations_and_the_env_by_the_heuristic():
    problem = bandit.make_bandit(8, 64, 1.0, 3)
    cfg = StepConfig(transform=parse_transform("exp:4"), loss=LossConfig(beta=0.2), num_samples=8, num_ref=16)
    logits = {"logits": problem.ref_logits}
    env = {"rewards": problem.rewards}
    mesh = make_mesh(2, 4)
    for policy, want in ((bandit.TabularPolicy(), P(None, "fsdp")), (_AnnotatedPolicy(), P("fsdp", None))):
        trainer = CtrlTrainer(policy, bandit.bandit_scorer, cfg, make_optimizer(0.1, 10), mesh)
        state = trainer.init_state(logits, logits, env, 0)
        assert state.params["logits"].sharding.spec == want
        assert state.ref_params["logits"].sharding.spec == want
        assert state.env["rewards"].sharding.spec == P(None, "fsdp")
