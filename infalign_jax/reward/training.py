"""Training a Bradley–Terry reward model on HH-RLHF: the run behind ``python -m infalign_jax.train_rm``.

:func:`run`: load the HH pairs (``infalign_jax.data.hh``) → compute backbone features of every (prompt, reply)
once and cache them in ``<workdir>/feature_cache`` (valid because the backbone is frozen in this phase; the
key hashes the spec, the backbone files and the texts) → train the scalar head with optax on the train split
(:func:`train_head`) → optionally fine-tune the top encoder layers (:func:`finetune`) → pairwise accuracy with
a bootstrap 95% CI on the ``eval`` split → save the model (:mod:`infalign_jax.reward.storage`) and write
``eval.json``. The reward r(x, y) it produces is what InfAlign calibrates and transforms (paper Sec. 4–5).

Library code: it takes a validated :class:`~infalign_jax.reward.spec.RewardSpec` and a typed
:class:`RewardTrainConfig` (the CLI builds both from the ``ml_collections`` config) and never imports the CLI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infalign_jax.errors import UsageError
from infalign_jax.harness.optimizer import make_optimizer
from infalign_jax.io_utils import (
    atomic_write_bytes,
    atomic_write_json,
    check_directory_path,
    ensure_writable_dir,
)
from infalign_jax.metrics_log import MetricsWriter
from infalign_jax.reward.bradley_terry import (
    epoch_batches,
    evaluate_pairs,
    fit_head,
    make_train_step,
    pairwise_correct,
    select_l2_by_cv,
    standardization,
)
from infalign_jax.reward.nets import trained_filter
from infalign_jax.reward.scoring import RewardModel, build_reward_model
from infalign_jax.reward.spec import CKPT_DIR, SPEC_FILE, RewardSpec
from infalign_jax.reward.storage import save_reward_model

FINETUNE_TRAIN_ACC_PAIRS = 256  # after fine-tuning, train accuracy is measured on this many train pairs

# What a reward-model run writes into its workdir; anything else there belongs to another command.
RUN_OUTPUTS = frozenset({"feature_cache", "metrics.jsonl", "tb", SPEC_FILE, CKPT_DIR, "eval.json"})


@dataclasses.dataclass(frozen=True)
class RewardTrainConfig:
    """The settings of one training run (``configs/rm_hh_*.py``: ``seed``, ``data.*``, ``train.*``,
    ``eval.n_boot``), already validated; the model itself is the :class:`RewardSpec`."""

    seed: int  # head initialization, minibatch order and the bootstrap
    data_dir: str | os.PathLike  # built TFDS dataset (built from manual_dir if missing)
    manual_dir: str  # raw HH-RLHF folder; "" = $INFALIGN_HH_DIR, else the packaged copy
    max_train_pairs: int  # 0 = all
    max_eval_pairs: int  # 0 = all
    encode_batch_size: int
    head_steps: int  # >= 1: the head is always fit
    head_batch_size: int
    head_learning_rate: float
    head_l2: tuple[float, ...]  # several values -> picked by 5-fold CV on train
    finetune_steps: int  # 0 = head only
    finetune_batch_size: int
    finetune_learning_rate: float
    log_every: int  # steps between metrics rows
    n_boot: int  # bootstrap resamples of the eval accuracy's 95% CI


# ------------------------------------------------------------------------------------------------- data


def load_pairs(cfg: RewardTrainConfig) -> dict[str, dict[str, list[str]]]:
    """``{"train"|"eval": {"prompt"|"chosen"|"rejected": [str]}}`` (the first ``max_*_pairs`` of each
    split), building the dataset if missing; an empty split → UsageError."""
    from infalign_jax.data.hh import build_or_load

    out = {}
    for split, limit in (("train", cfg.max_train_pairs), ("eval", cfg.max_eval_pairs)):
        src = build_or_load(split, cfg.data_dir, cfg.manual_dir or None)
        n = len(src) if not limit else min(int(limit), len(src))
        recs = [src[i] for i in range(n)]
        if not recs:
            raise UsageError(f"the {split} split of {cfg.data_dir} is empty")
        out[split] = {k: [r[k] for r in recs] for k in ("prompt", "chosen", "rejected")}
    return out


def cached_features(
    rm: RewardModel, pairs: dict[str, list[str]], cache_dir: Path, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Backbone features of (prompt, chosen) and (prompt, rejected): [N, F] each, cached by content hash."""
    h = hashlib.sha256(rm.fingerprint().encode())
    for k in ("prompt", "chosen", "rejected"):
        for s in pairs[k]:
            h.update(s.encode())
            h.update(b"\0")
    path = cache_dir / f"features-{h.hexdigest()[:20]}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["chosen"], z["rejected"]
    n = len(pairs["prompt"])
    both = rm.features_texts(
        pairs["prompt"] * 2, pairs["chosen"] + pairs["rejected"], batch_size, progress=True
    )
    fc, fr = both[:n], both[n:]
    buf = io.BytesIO()
    np.savez(buf, chosen=fc, rejected=fr)
    atomic_write_bytes(path, buf.getvalue())
    return fc, fr


# --------------------------------------------------------------------------------------------- training


def train_head(rm: RewardModel, fc_nf, fr_nf, cfg: RewardTrainConfig, writer: MetricsWriter) -> dict:
    """Sets the head's feature statistics from the train features, picks the L2 strength by 5-fold CV on the
    train split (if ``cfg.head_l2`` lists several), and trains the head on all train pairs."""
    net = rm.net
    mean, std = standardization(np.concatenate([fc_nf, fr_nf]))
    net.head.mean[...] = jnp.asarray(mean)
    net.head.std[...] = jnp.asarray(std)
    fit_kw = dict(
        steps=int(cfg.head_steps),
        batch_size=int(cfg.head_batch_size),
        learning_rate=float(cfg.head_learning_rate),
        seed=int(cfg.seed),
    )
    grid = [float(v) for v in cfg.head_l2]
    cv = {}
    if len(grid) > 1:
        l2, cv = select_l2_by_cv(net.head, fc_nf, fr_nf, grid, **fit_kw)
    else:
        l2 = grid[0]
    params, metrics = fit_head(net.head, fc_nf, fr_nf, l2=l2, **fit_kw)
    loss, acc = np.asarray(metrics["loss"]), np.asarray(metrics["accuracy"])
    for i in range(int(cfg.log_every) - 1, len(loss), int(cfg.log_every)):
        writer.write(i + 1, {"head/loss": loss[i], "head/accuracy": acc[i]})
    nnx.update(net.head, params)
    rm.set_net(net)
    return {"head_l2": l2, "cv_heldout_bt_loss": {str(k): v for k, v in cv.items()}}


def finetune(
    rm: RewardModel, pairs: dict[str, list[str]], cfg: RewardTrainConfig, writer: MetricsWriter, step0: int
) -> None:
    """Fine-tunes the trained subset (top encoder layers + head) on token batches."""
    net = rm.net
    graphdef, params, rest = nnx.split(net, trained_filter(rm.spec), ...)
    # The package's one optimizer: AdamW at a constant rate, no clipping, decay on every trained parameter.
    tx = make_optimizer(
        float(cfg.finetune_learning_rate),
        int(cfg.finetune_steps),
        schedule="constant",
        weight_decay=0.01,
        max_grad_norm=None,
    )
    opt_state = tx.init(params)

    def apply(module, batch):
        r = module(*batch)
        half = r.shape[0] // 2
        return r[:half], r[half:]

    step = jax.jit(make_train_step(graphdef, tx, apply))
    b = int(cfg.finetune_batch_size)
    n = len(pairs["prompt"])
    for i, idx in enumerate(epoch_batches(n, b, int(cfg.finetune_steps), cfg.seed + 1)):
        prompts = [pairs["prompt"][j] for j in idx]
        enc = rm.encode(
            prompts * 2, [pairs["chosen"][j] for j in idx] + [pairs["rejected"][j] for j in idx], batch=2 * b
        )
        batch = tuple(
            jnp.asarray(a) for a in (enc.prompt_bt, enc.prompt_mask_bt, enc.response_bl, enc.response_mask_bl)
        )
        params, opt_state, metrics = step(params, rest, opt_state, batch)
        if (i + 1) % int(cfg.log_every) == 0 or i + 1 == int(cfg.finetune_steps):
            writer.write(
                step0 + i + 1, {"finetune/loss": metrics["loss"], "finetune/accuracy": metrics["accuracy"]}
            )
    nnx.update(net, params)
    rm.set_net(net)


def head_rewards(rm: RewardModel, f_nf: np.ndarray) -> np.ndarray:
    """Rewards [N] of cached backbone features [N, F]: the head alone (a frozen backbone's scores)."""
    graphdef, state = nnx.split(rm.net.head)
    return np.asarray(jax.jit(lambda s, f: nnx.merge(graphdef, s)(f))(state, jnp.asarray(f_nf)))


# ------------------------------------------------------------------------------------------------- run


def check_workdir(workdir: Path) -> None:
    """UsageError (nothing created or touched) unless ``workdir`` can be this run's: a directory, or creatable
    as one, holding nothing but earlier train_rm outputs (a rerun replaces them and reuses the feature
    cache). Another command's workdir is refused."""
    workdir = check_directory_path(workdir, "workdir")
    entries = sorted(p.name for p in workdir.iterdir()) if workdir.is_dir() else []
    if foreign := [name for name in entries if name not in RUN_OUTPUTS]:
        raise UsageError(
            f"workdir {workdir} holds files train_rm does not write ({', '.join(foreign[:4])}); use an empty "
            "directory or an earlier train_rm workdir"
        )


def run(spec: RewardSpec, cfg: RewardTrainConfig, workdir: Path, config_record: Mapping[str, Any]) -> dict:
    """Trains, evaluates and saves a reward model in ``workdir`` (:func:`check_workdir` first); returns the
    report also written (atomically, last) to ``<workdir>/eval.json``. ``config_record``: the user's config
    as JSON, recorded under ``"config"`` (a rerun with the same config finds the run finished)."""
    check_workdir(workdir)
    t0 = time.perf_counter()
    timings = {}
    pairs = load_pairs(cfg)
    timings["data_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    rm = build_reward_model(spec, seed=int(cfg.seed))
    ensure_writable_dir(workdir)  # before the slow encoding (a read-only place fails here, not after it)
    cache_dir = workdir / "feature_cache"
    bs = int(cfg.encode_batch_size)
    fc_tr, fr_tr = cached_features(rm, pairs["train"], cache_dir, bs)
    fc_ev, fr_ev = cached_features(rm, pairs["eval"], cache_dir, bs)
    timings["features_s"] = time.perf_counter() - t

    total = int(cfg.head_steps) + int(cfg.finetune_steps)
    for old_log in (workdir / "metrics.jsonl", workdir / "tb"):  # a rerun logs afresh (it does not resume)
        shutil.rmtree(old_log) if old_log.is_dir() else old_log.unlink(missing_ok=True)
    writer = MetricsWriter(workdir, total_steps=total, desc="train_rm")
    try:
        t = time.perf_counter()
        head_info = train_head(rm, fc_tr, fr_tr, cfg, writer)
        timings["head_train_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if int(cfg.finetune_steps) > 0:
            finetune(rm, pairs["train"], cfg, writer, int(cfg.head_steps))
        timings["finetune_s"] = time.perf_counter() - t

        t = time.perf_counter()
        if int(cfg.finetune_steps) > 0:
            ev, tr = pairs["eval"], pairs["train"]
            rc_ev, rr_ev = (rm.score_texts(ev["prompt"], ev[k], bs) for k in ("chosen", "rejected"))
            m = min(len(tr["prompt"]), FINETUNE_TRAIN_ACC_PAIRS)  # re-encoding all of train is slow on CPU
            rc_tr, rr_tr = (rm.score_texts(tr["prompt"][:m], tr[k][:m], bs) for k in ("chosen", "rejected"))
        else:
            rc_ev, rr_ev = head_rewards(rm, fc_ev), head_rewards(rm, fr_ev)
            rc_tr, rr_tr = head_rewards(rm, fc_tr), head_rewards(rm, fr_tr)
        result = evaluate_pairs(rc_ev, rr_ev, seed=int(cfg.seed), n_boot=int(cfg.n_boot))
        train_acc = float(pairwise_correct(rc_tr, rr_tr).mean())
        timings["eval_s"] = time.perf_counter() - t
        writer.write(
            total,
            {"eval/pairwise_accuracy": result["pairwise_accuracy"], "train/pairwise_accuracy": train_acc},
        )
    finally:
        writer.close()

    t = time.perf_counter()
    save_reward_model(rm, workdir)
    timings["save_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    report = {
        "pairwise_accuracy": result["pairwise_accuracy"],
        "ci95": result["ci95"],
        "n_eval": result["n"],
        "train_pairwise_accuracy": train_acc,
        "n_train_scored": len(rc_tr),
        "n_train": len(pairs["train"]["prompt"]),
        **head_info,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
        "spec": spec.to_json(),
        "config": dict(config_record),
    }
    atomic_write_json(workdir / "eval.json", report)
    return report
