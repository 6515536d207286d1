"""Device meshes for data/fsdp parallelism.

JAX 0.10 ``jax.make_mesh`` defaults to Explicit axis types, which breaks classic GSPMD code (e.g.
``nnx.Embed`` gathers). All meshes here use ``AxisType.Auto`` so ``jax.jit`` + ``NamedSharding`` works
unchanged from one CPU device to a TPU pod. Axis names: ``'data'`` (batch) and ``'fsdp'`` (parameter
sharding).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA, FSDP = "data", "fsdp"


def make_mesh(data: int | None = None, fsdp: int = 1, devices=None) -> Mesh:
    """A ('data', 'fsdp') mesh over ``devices`` (default: all). ``data=None`` uses all remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or (data is not None and data < 1) or not devices:
        raise ValueError(f"a mesh needs data >= 1, fsdp >= 1 and devices, got data={data}, fsdp={fsdp}")
    if data is None:
        if len(devices) % fsdp:
            raise ValueError(f"fsdp={fsdp} does not divide the {len(devices)} devices")
        data = len(devices) // fsdp
    if data * fsdp != len(devices):
        raise ValueError(f"mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices, have {len(devices)}")
    grid = np.asarray(devices, dtype=object).reshape(data, fsdp)
    return Mesh(grid, (DATA, FSDP), axis_types=(AxisType.Auto, AxisType.Auto))


def data_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Shards the leading (batch) axis over 'data'; other axes replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
