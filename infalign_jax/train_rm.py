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

import json
from collections.abc import Sequence
from pathlib import Path

from infalign_jax import config_checks as cc
from infalign_jax import run_settings
from infalign_jax.cli import UsageError, parse_config_flags, run_main, run_summary
from infalign_jax.reward.spec import CKPT_DIR, SPEC_FILE, RewardSpec
from infalign_jax.reward.training import RUN_OUTPUTS, RewardTrainConfig, run
from infalign_jax.seeds import check_seed


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


def train_config_from_config(config) -> RewardTrainConfig:
    """The typed training settings (:class:`~infalign_jax.reward.training.RewardTrainConfig`) of a config
    that passed :func:`validate`."""
    d, t = config.data, config.train
    return RewardTrainConfig(
        seed=int(config.seed),
        data_dir=d.data_dir,
        manual_dir=d.manual_dir,
        max_train_pairs=int(d.max_train_pairs),
        max_eval_pairs=int(d.max_eval_pairs),
        encode_batch_size=int(t.encode_batch_size),
        head_steps=int(t.head_steps),
        head_batch_size=int(t.head_batch_size),
        head_learning_rate=float(t.head_learning_rate),
        head_l2=tuple(t.head_l2),
        finetune_steps=int(t.finetune_steps),
        finetune_batch_size=int(t.finetune_batch_size),
        finetune_learning_rate=float(t.finetune_learning_rate),
        log_every=int(t.log_every),
        n_boot=int(config.eval.n_boot),
    )


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
    spec, train_config = spec_from_config(config), train_config_from_config(config)
    report = run(spec, train_config, workdir, config_record=json.loads(config.to_json()))
    print(summary_text(report, workdir), flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
