"""Train a Bradley–Terry reward model on HH-RLHF and evaluate its held-out pairwise accuracy.

    python -m infalign_jax.train_rm --config configs/rm_hh_harmless.py [--workdir W] [--config.KEY=VALUE ...]

Steps: build/load the HH dataset (``infalign_jax.data.hh``) → compute backbone features of every (prompt,
reply) once and cache them in ``<workdir>/feature_cache`` (valid because the backbone is frozen in this
phase; the key hashes the spec, the backbone files and the texts) → train the scalar head with optax on the
train split → optionally fine-tune the top encoder layers → pairwise accuracy with a bootstrap 95% CI on
the ``eval`` split.

Writes to the workdir: ``eval.json`` (atomically; ``pairwise_accuracy``, ``ci95``, ``n_eval``, train accuracy,
timings, config), ``rm_spec.json`` + ``checkpoint/`` (Orbax; reload with
:func:`infalign_jax.reward.load_reward_model`), ``metrics.jsonl`` and TensorBoard events under ``tb/``.
Invalid config → ``error: ...`` and exit 2.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from infalign_jax import config_checks as cc
from infalign_jax import run_settings
from infalign_jax.cli import UsageError, parse_config_flags, run_main, run_summary
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
from infalign_jax.reward.model import (
    CKPT_DIR,
    SPEC_FILE,
    RewardModel,
    RewardSpec,
    build_reward_model,
    save_reward_model,
)
from infalign_jax.seeds import check_seed

FINETUNE_TRAIN_ACC_PAIRS = 256  # after fine-tuning, train accuracy is measured on this many train pairs


def parse_args(argv: Sequence[str] | None):
    """``(config, workdir)`` from ``--config FILE [--workdir W] [--config.a.b=v ...]``; bad input →
    UsageError."""
    from absl import flags

    def define(fv):
        flags.DEFINE_string("workdir", None, "output directory (default: config.workdir)", flag_values=fv)

    config, fv = parse_config_flags(
        argv,
        prog="python -m infalign_jax.train_rm",
        example="configs/rm_hh_harmless.py",
        define_flags=define,
        description=__doc__,
    )
    try:
        workdir = Path(fv.workdir or config.workdir)
    except AttributeError as e:
        raise UsageError(f"bad config: {e}") from e
    return config, workdir


def spec_from_config(config) -> RewardSpec:
    m = config.model
    try:
        return RewardSpec(
            backbone=m.backbone,
            decoder_path=m.decoder_path,
            features=tuple(m.features),
            head_hidden=int(m.head_hidden),
            train_layers=int(m.train_layers),
            max_prompt_tokens=int(m.max_prompt_tokens),
            max_response_tokens=int(m.max_response_tokens),
            length_buckets=tuple(m.length_buckets),
            batch_buckets=tuple(m.batch_buckets),
            policy_tokens=bool(m.get("policy_tokens", False)),  # configs/rm_hh_policy.py
        )
    except (AttributeError, TypeError) as e:
        raise UsageError(f"bad model config: {e}") from e


# Numeric fields checked before any work (config_checks.number bounds).
CONFIG_NUMBERS = tuple(
    (f"train.{name}", cc.COUNT)
    for name in ("encode_batch_size", "head_batch_size", "finetune_batch_size", "log_every", "head_steps")
) + (  # head_steps >= 1: the linear head is always fit (before any fine-tuning)
    ("train.finetune_steps", dict(integer=True, ge=0)),
    ("train.head_learning_rate", cc.POSITIVE),
    ("train.finetune_learning_rate", cc.POSITIVE),
    ("data.max_train_pairs", dict(integer=True, ge=0)),
    ("data.max_eval_pairs", dict(integer=True, ge=0)),
    ("eval.n_boot", cc.COUNT),
)


def validate(config) -> None:
    check_seed(config.seed)
    t = config.train
    cc.numbers(config, CONFIG_NUMBERS)
    grid = t.head_l2 if isinstance(t.head_l2, tuple | list) else (t.head_l2,)
    if not grid:
        raise UsageError(f"train.head_l2 must be a number or a non-empty list of numbers, got {t.head_l2}")
    for v in grid:
        cc.number(v, "each train.head_l2", ge=0)
    t.head_l2 = tuple(float(v) for v in grid)
    if int(t.finetune_steps) > 0 and int(config.model.train_layers) == 0:
        raise UsageError("train.finetune_steps > 0 needs model.train_layers != 0 (which layers to fine-tune)")


# ------------------------------------------------------------------------------------------------- data


def load_pairs(config) -> dict[str, dict[str, list[str]]]:
    from infalign_jax.data.hh import build_or_load

    out = {}
    for split, limit in (("train", config.data.max_train_pairs), ("eval", config.data.max_eval_pairs)):
        src = build_or_load(split, config.data.data_dir, config.data.manual_dir or None)
        n = len(src) if not limit else min(int(limit), len(src))
        recs = [src[i] for i in range(n)]
        if not recs:
            raise UsageError(f"the {split} split of {config.data.data_dir} is empty")
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


def train_head(rm: RewardModel, fc_nf, fr_nf, config, writer: MetricsWriter) -> dict:
    """Sets the head's feature statistics from the train features, picks the L2 strength by 5-fold CV on the
    train split (if ``train.head_l2`` lists several), and trains the head on all train pairs."""
    t = config.train
    net = rm.net
    mean, std = standardization(np.concatenate([fc_nf, fr_nf]))
    net.head.mean[...] = jnp.asarray(mean)
    net.head.std[...] = jnp.asarray(std)
    fit_kw = dict(
        steps=int(t.head_steps),
        batch_size=int(t.head_batch_size),
        learning_rate=float(t.head_learning_rate),
        seed=int(config.seed),
    )
    grid = [float(v) for v in t.head_l2]
    cv = {}
    if len(grid) > 1:
        l2, cv = select_l2_by_cv(net.head, fc_nf, fr_nf, grid, **fit_kw)
    else:
        l2 = grid[0]
    params, metrics = fit_head(net.head, fc_nf, fr_nf, l2=l2, **fit_kw)
    loss, acc = np.asarray(metrics["loss"]), np.asarray(metrics["accuracy"])
    for i in range(int(t.log_every) - 1, len(loss), int(t.log_every)):
        writer.write(i + 1, {"head/loss": loss[i], "head/accuracy": acc[i]})
    nnx.update(net.head, params)
    rm.set_net(net)
    return {"head_l2": l2, "cv_heldout_bt_loss": {str(k): v for k, v in cv.items()}}


def finetune(rm: RewardModel, pairs: dict[str, list[str]], config, writer: MetricsWriter, step0: int) -> None:
    """Fine-tunes the trained subset (top encoder layers + head) on token batches."""
    from infalign_jax.reward.model import trained_filter

    t = config.train
    net = rm.net
    graphdef, params, rest = nnx.split(net, trained_filter(rm.spec), ...)
    tx = optax.adamw(float(t.finetune_learning_rate), weight_decay=0.01)
    opt_state = tx.init(params)

    def apply(module, batch):
        r = module(*batch)
        half = r.shape[0] // 2
        return r[:half], r[half:]

    step = jax.jit(make_train_step(graphdef, tx, apply))
    b = int(t.finetune_batch_size)
    n = len(pairs["prompt"])
    for i, idx in enumerate(epoch_batches(n, b, int(t.finetune_steps), config.seed + 1)):
        prompts = [pairs["prompt"][j] for j in idx]
        enc = rm.encode(
            prompts * 2, [pairs["chosen"][j] for j in idx] + [pairs["rejected"][j] for j in idx], batch=2 * b
        )
        batch = tuple(
            jnp.asarray(a) for a in (enc.prompt_bp, enc.prompt_mask_bp, enc.response_br, enc.response_mask_br)
        )
        params, opt_state, metrics = step(params, rest, opt_state, batch)
        if (i + 1) % int(t.log_every) == 0 or i + 1 == int(t.finetune_steps):
            writer.write(
                step0 + i + 1, {"finetune/loss": metrics["loss"], "finetune/accuracy": metrics["accuracy"]}
            )
    nnx.update(net, params)
    rm.set_net(net)


def head_rewards(rm: RewardModel, f_nf: np.ndarray) -> np.ndarray:
    graphdef, state = nnx.split(rm.net.head)
    return np.asarray(jax.jit(lambda s, f: nnx.merge(graphdef, s)(f))(state, jnp.asarray(f_nf)))


# ------------------------------------------------------------------------------------------------- main


# What a train_rm run writes into its workdir; anything else there belongs to another command.
RUN_OUTPUTS = frozenset({"feature_cache", "metrics.jsonl", "tb", SPEC_FILE, CKPT_DIR, "eval.json"})


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


def run(config, workdir: Path) -> dict:
    validate(config)
    spec = spec_from_config(config)
    check_workdir(workdir)
    t0 = time.perf_counter()
    timings = {}
    pairs = load_pairs(config)
    timings["data_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    rm = build_reward_model(spec, seed=int(config.seed))
    ensure_writable_dir(workdir)  # before the slow encoding (a read-only place fails here, not after it)
    cache_dir = workdir / "feature_cache"
    bs = int(config.train.encode_batch_size)
    fc_tr, fr_tr = cached_features(rm, pairs["train"], cache_dir, bs)
    fc_ev, fr_ev = cached_features(rm, pairs["eval"], cache_dir, bs)
    timings["features_s"] = time.perf_counter() - t

    total = int(config.train.head_steps) + int(config.train.finetune_steps)
    for old_log in (workdir / "metrics.jsonl", workdir / "tb"):  # a rerun logs afresh (it does not resume)
        shutil.rmtree(old_log) if old_log.is_dir() else old_log.unlink(missing_ok=True)
    writer = MetricsWriter(workdir, total_steps=total, desc="train_rm")
    try:
        t = time.perf_counter()
        head_info = train_head(rm, fc_tr, fr_tr, config, writer)
        timings["head_train_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if int(config.train.finetune_steps) > 0:
            finetune(rm, pairs["train"], config, writer, int(config.train.head_steps))
        timings["finetune_s"] = time.perf_counter() - t

        t = time.perf_counter()
        if int(config.train.finetune_steps) > 0:
            ev, tr = pairs["eval"], pairs["train"]
            rc_ev, rr_ev = (rm.score_texts(ev["prompt"], ev[k], bs) for k in ("chosen", "rejected"))
            m = min(len(tr["prompt"]), FINETUNE_TRAIN_ACC_PAIRS)  # re-encoding all of train is slow on CPU
            rc_tr, rr_tr = (rm.score_texts(tr["prompt"][:m], tr[k][:m], bs) for k in ("chosen", "rejected"))
        else:
            rc_ev, rr_ev = head_rewards(rm, fc_ev), head_rewards(rm, fr_ev)
            rc_tr, rr_tr = head_rewards(rm, fc_tr), head_rewards(rm, fr_tr)
        result = evaluate_pairs(rc_ev, rr_ev, seed=int(config.seed), n_boot=int(config.eval.n_boot))
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
        "config": json.loads(config.to_json()),
    }
    atomic_write_json(workdir / "eval.json", report)
    return report


def finished_run(config, workdir: Path) -> dict | None:
    """The report (``eval.json``) of the run of ``config`` (validated) finished in ``workdir`` — its reward
    model saved, the config it records equal to ``config`` —, else None. Reads only."""
    if not all((workdir / n).exists() for n in (SPEC_FILE, CKPT_DIR, "eval.json")):
        return None
    try:
        report = run_settings.read_settings(workdir / "eval.json")
    except UsageError:
        return None
    return report if report.get("config") == json.loads(config.to_json()) else None


def summary_text(report: dict, workdir: Path, already_complete: bool = False) -> str:
    """The human summary of a run (:func:`~infalign_jax.cli.run_summary`): held-out pairwise accuracy with
    its bootstrap 95% CI, and where the outputs are."""
    lo, hi = report["ci95"]
    acc = f"{report['pairwise_accuracy']:.4f} (95% CI [{lo:.4f}, {hi:.4f}], n = {report['n_eval']})"
    rows = [("held-out pairwise accuracy", acc)]
    rows.append(("train pairwise accuracy", f"{report['train_pairwise_accuracy']:.4f}"))
    rows.append(("time", f"{report['timings']['total_s']:.1f} s"))
    title = f"reward model: Bradley–Terry head trained on {report['n_train']} HH-RLHF pairs"
    found = [n + "/" * (workdir / n).is_dir() for n in sorted(RUN_OUTPUTS) if (workdir / n).exists()]
    return run_summary(title, rows, f"{workdir} ({', '.join(found)})", already_complete=already_complete)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI (see the module docstring). Ends with :func:`summary_text` on stdout; rerun on a finished run
    with the same config, it prints ``already complete: ...`` and exits 0 without training again."""
    config, workdir = parse_args(argv)
    validate(config)
    if (done := finished_run(config, workdir)) is not None:
        print(summary_text(done, workdir, already_complete=True), flush=True)
        return 0
    report = run(config, workdir)
    print(summary_text(report, workdir), flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
