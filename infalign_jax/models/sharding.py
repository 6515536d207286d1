"""Parameter shardings on the ('data', 'fsdp') mesh of :mod:`infalign_jax.mesh`: the one policy.

Every :class:`~infalign_jax.models.transformer.Transformer` parameter carries an ``out_sharding`` annotation
(hidden axis -> ``'fsdp'``; vocab axis for the embedding/LM head). :func:`state_shardings` turns those into
``NamedSharding``s for a concrete mesh; an axis whose size the mesh axis does not divide is replicated
instead, so every model works on every mesh (tiny test models on 8 devices included).
:func:`params_specs` gives the same annotations for the plain parameter dict ``Transformer.params()`` (the
CTRL policy's params), and :func:`fit_shardings` turns any tree of annotations into shardings.

:func:`param_shardings` is the policy that decides (the CTRL trainer places its params, reference params and
env with it): a model's annotations where there are any; the largest-divisible-axis heuristic
:func:`fsdp_sharding` only for pytrees without any (the bandit's logit and reward tables, the MiniLM reward
encoder).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from infalign_jax.mesh import FSDP, replicated
from infalign_jax.models.config import ModelConfig
from infalign_jax.models.transformer import param_shapes


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    axes = []
    for dim, name in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = () if name is None else (name,) if isinstance(name, str) else tuple(name)
        size = 1
        for n in names:
            size *= mesh.shape[n]
        axes.append(name if names and dim % size == 0 else None)
    return PartitionSpec(*axes)


def fit_shardings(tree: Any, specs: Any, mesh: Mesh) -> Any:
    """``NamedSharding`` for every leaf of ``tree`` from ``specs``, a tree of the same structure with a
    ``PartitionSpec`` (or None: replicated) per leaf; an axis the mesh axis does not divide is replicated."""
    return jax.tree.map(
        lambda x, spec: NamedSharding(
            mesh, _fit(spec if spec is not None else PartitionSpec(), np.shape(x), mesh)
        ),
        tree,
        specs,
        is_leaf=lambda s: isinstance(s, PartitionSpec),
    )


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """``NamedSharding`` for every leaf of a model ``state`` (same tree structure, for ``jax.device_put`` /
    jit)."""
    return fit_shardings(state, nnx.get_partition_spec(state), mesh)


def params_specs(config: ModelConfig) -> dict:
    """The ``PartitionSpec`` of every entry of ``Transformer.params()`` (the same nested dict
    ``{"embed": ..., "layers": {...}}``): the ``out_sharding`` annotations of
    :func:`~infalign_jax.models.transformer.param_shapes`."""
    out: dict = {"layers": {}}
    for name, (_, names) in param_shapes(config).items():
        if name.startswith("layers."):
            out["layers"][name.split(".", 1)[1]] = PartitionSpec(*names)
        else:
            out[name] = PartitionSpec(*names)
    return out


def shard_state(state: nnx.State, mesh: Mesh) -> nnx.State:
    """``state`` placed on ``mesh`` according to :func:`state_shardings`."""
    return jax.device_put(state, state_shardings(state, mesh))


def fsdp_sharding(tree: Any, mesh: Mesh) -> Any:
    """The heuristic for pytrees without annotations: the largest axis divisible by the fsdp size goes on
    fsdp (the first such axis among equals); the rest replicated."""
    n = mesh.shape[FSDP]

    def one(x):
        shape = np.shape(x)
        if n > 1:
            axes = sorted(range(len(shape)), key=lambda a: -shape[a])
            for a in axes:
                if shape[a] % n == 0:
                    spec = [None] * len(shape)
                    spec[a] = FSDP
                    return NamedSharding(mesh, PartitionSpec(*spec))
        return replicated(mesh)

    return jax.tree.map(one, tree)


def _names_an_axis(specs: Any) -> bool:
    leaves = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, PartitionSpec))
    return any(isinstance(s, PartitionSpec) and any(a is not None for a in s) for s in leaves)


def param_shardings(tree: Any, mesh: Mesh, specs: Any = None) -> Any:
    """``NamedSharding`` per leaf of a parameter pytree ``tree``: the one parameter-sharding policy.

    The annotations are ``specs`` (a ``PartitionSpec`` per leaf, e.g. :func:`params_specs` of the policy's
    model) or, when ``tree`` is an ``nnx.State``, its Variables' own ``out_sharding``. If they name a mesh
    axis anywhere they decide (:func:`fit_shardings`: unannotated leaves replicated, indivisible axes
    replicated); a tree without any (``specs`` None on a plain pytree, or an ``nnx`` model that annotates
    nothing) gets :func:`fsdp_sharding`."""
    if specs is None and isinstance(tree, nnx.State):
        specs = nnx.get_partition_spec(tree)
    if specs is not None and _names_an_axis(specs):
        return fit_shardings(tree, specs, mesh)
    return fsdp_sharding(tree, mesh)
