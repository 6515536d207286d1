"""Placing the CTRL trainer's host pytrees on the ('data', 'fsdp') mesh (paper Sec. 4 at scale).

- Parameters, reference parameters, env: :func:`~infalign_jax.models.sharding.param_shardings`, the one
  parameter-sharding policy (a model's annotations; :func:`~infalign_jax.models.sharding.fsdp_sharding`,
  largest divisible axis on 'fsdp', for model-free pytrees such as the bandit's tables).
- Batches: :func:`batch_sharding`, the leading (prompt) axis on 'data'.
- :func:`put_global`: host numpy arrays, identical on every process, as global arrays with given shardings.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from infalign_jax.mesh import DATA

PyTree = Any


def batch_sharding(batch: PyTree, mesh: Mesh) -> PyTree:
    """Every leaf's leading axis on 'data', the rest replicated."""
    return jax.tree.map(
        lambda x: NamedSharding(mesh, PartitionSpec(DATA, *([None] * (np.ndim(x) - 1)))), batch
    )


def put_global(tree: PyTree, shardings: PyTree) -> PyTree:
    """Places host numpy arrays (identical on every process) as global arrays; works multi-process."""

    def one(x, sh):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])

    return jax.tree.map(one, tree, shardings)
