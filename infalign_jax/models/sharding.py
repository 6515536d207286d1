"""Parameter shardings on the ('data', 'fsdp') mesh of :mod:`infalign_jax.mesh`.

Every :class:`~infalign_jax.models.transformer.Transformer` parameter carries an ``out_sharding`` annotation
(hidden axis -> ``'fsdp'``; vocab axis for the embedding/LM head). :func:`state_shardings` turns those into
``NamedSharding``s for a concrete mesh; an axis whose size the mesh axis does not divide is replicated
instead, so every model works on every mesh (tiny test models on 8 devices included).
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    axes = []
    for dim, name in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = () if name is None else (name,) if isinstance(name, str) else tuple(name)
        size = 1
        for n in names:
            size *= mesh.shape[n]
        axes.append(name if names and dim % size == 0 else None)
    return PartitionSpec(*axes)


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """``NamedSharding`` for every leaf of a model ``state`` (same tree structure, for ``jax.device_put`` /
    jit)."""
    specs = nnx.get_partition_spec(state)
    return jax.tree.map(
        lambda x, spec: NamedSharding(
            mesh, _fit(spec if spec is not None else PartitionSpec(), x.shape, mesh)
        ),
        state,
        specs,
        is_leaf=lambda s: isinstance(s, PartitionSpec),
    )


def shard_state(state: nnx.State, mesh: Mesh) -> nnx.State:
    """``state`` placed on ``mesh`` according to :func:`state_shardings`."""
    return jax.device_put(state, state_shardings(state, mesh))
