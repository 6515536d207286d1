"""Saving and loading reward models: ``<dir>/rm_spec.json`` + an Orbax checkpoint of the trained state.

A checkpoint stores only what training changed (:func:`saved_filter`: the trained parameters and the head's
feature statistics); the pretrained backbone is reloaded from its files by
:func:`~infalign_jax.reward.scoring.build_reward_model`. :func:`weights_digest` hashes a saved model's content
(the CTRL calibration table records it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from infalign_jax.errors import UsageError
from infalign_jax.reward.nets import FeatureStat, trained_filter
from infalign_jax.reward.scoring import RewardModel, build_reward_model
from infalign_jax.reward.spec import CKPT_DIR, SPEC_FILE, RewardSpec


def saved_filter(spec: RewardSpec):
    """What a checkpoint stores: the trained parameters plus the head's feature statistics."""
    return nnx.Any(trained_filter(spec), FeatureStat)


def save_reward_model(rm: RewardModel, path: str | os.PathLike) -> None:
    """Writes ``<path>/rm_spec.json`` and an Orbax checkpoint ``<path>/checkpoint`` of the trained state."""
    import orbax.checkpoint as ocp

    from infalign_jax.io_utils import atomic_write_json

    path = Path(path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    state = nnx.state(rm.net, saved_filter(rm.spec))
    ckpt = path / CKPT_DIR
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(ckpt, nnx.to_pure_dict(state), force=True)
        ckptr.wait_until_finished()
    atomic_write_json(path / SPEC_FILE, rm.spec.to_json())


def _restore_saved(ckpt: Path, target=None):
    """The arrays of the Orbax checkpoint ``ckpt`` (shaped like ``target``, default: as saved), on THIS
    process's first device: without a sharding Orbax restores onto the saved one (device 0 of the process
    that saved), which other processes of a jax.distributed run do not have."""
    import orbax.checkpoint as ocp

    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.StandardCheckpointer() as ckptr:
        if target is None:
            target = ckptr.metadata(ckpt).item_metadata
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local), target)
        return ckptr.restore(ckpt, abstract)


def weights_digest(workdir: str | os.PathLike) -> str:
    """sha256 of a saved reward model's CONTENT: its spec and its saved arrays (names, dtypes, shapes,
    values). Unlike a hash of the checkpoint's files it is the same for a deterministic rerun of
    ``train_rm`` (Orbax writes timestamps and randomly named files), and changes with any weight."""
    workdir = Path(workdir).resolve()
    if not (workdir / SPEC_FILE).exists() or not (workdir / CKPT_DIR).exists():
        raise UsageError(f"no reward model in {workdir} (need {SPEC_FILE} and {CKPT_DIR}/)")
    try:
        spec = json.loads((workdir / SPEC_FILE).read_text())
    except ValueError as e:
        raise UsageError(f"cannot read {workdir / SPEC_FILE}: {e}") from None
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for path, leaf in jax.tree_util.tree_leaves_with_path(_restore_saved(workdir / CKPT_DIR)):
        arr = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def load_reward_model(workdir: str | os.PathLike, seed: int = 0) -> RewardModel:
    """Rebuilds the reward model saved by :func:`save_reward_model` (or by ``train_rm`` in ``workdir``)."""
    workdir = Path(workdir).resolve()
    spec_path = workdir / SPEC_FILE
    if not spec_path.exists() or not (workdir / CKPT_DIR).exists():
        raise UsageError(
            f"no reward model in {workdir} (need {SPEC_FILE} and {CKPT_DIR}/; run train_rm first)"
        )
    spec = RewardSpec.from_json(json.loads(spec_path.read_text()))
    rm = build_reward_model(spec, seed)
    net = rm.net
    state = nnx.state(net, saved_filter(spec))
    nnx.replace_by_pure_dict(state, _restore_saved(workdir / CKPT_DIR, nnx.to_pure_dict(state)))
    nnx.update(net, state)
    rm.set_net(net)
    return rm
