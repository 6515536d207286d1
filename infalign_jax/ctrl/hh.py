"""CTRL on HH-RLHF harmless prompts with the real components (paper Sec. 5 setup, smoke scale).

``config.problem = "hh"`` (``configs/ctrl_hh_harmless.py``): the policy and π_ref are the SFT export
(``python -m infalign_jax.sft``), the reward is the MiniLM reward model (``python -m infalign_jax.train_rm``),
prompts are the first ``hh.num_prompts`` prompts of an HH split, and the calibration reference is the offline
table built by ``python -m infalign_jax.calibrate`` (``reference="offline"``) or K samples of π_ref drawn in
the step (``reference="online"``).

:func:`load_components` is shared by the trainer (:func:`build_problem`) and the table builder
(:mod:`infalign_jax.calibrate`), so both see the same prompts, tokenization and reward computation;
:func:`table_meta` records those settings in the table, and a table built for other settings is refused.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from infalign_jax.ctrl.calibration import calibrate
from infalign_jax.ctrl.lm import (
    EncodedPrompts,
    LMPolicy,
    PromptBatches,
    RewardScorer,
    encode_prompts,
    reference_rewards,
)
from infalign_jax.ctrl.problem import CtrlProblem
from infalign_jax.ctrl.token_scorer import make_scorer
from infalign_jax.errors import UsageError

SFT_COMMAND = "python -m infalign_jax.sft --config configs/sft_hh_tiny.py"
RM_COMMAND = "python -m infalign_jax.train_rm --config configs/rm_hh_harmless.py"
RM_COMMANDS = {  # hh.reward_scorer -> the command that makes its reward model
    "callback": RM_COMMAND,
    "in_step": "python -m infalign_jax.train_rm --config configs/rm_hh_policy.py",
}
CALIBRATE_COMMAND = "python -m infalign_jax.calibrate --config configs/ctrl_hh_harmless.py"


@dataclass(frozen=True, eq=False)
class HHComponents:
    """The loaded real parts: policy (+ its initial params, host numpy), scorer (+ env), encoded prompts, and
    ``rewards_fn(params, env, batch, rng, k=K) -> [P, K]``: :func:`~infalign_jax.ctrl.lm.reference_rewards`
    jitted once (copies made with ``dataclasses.replace`` share its compilations)."""

    policy: LMPolicy
    params: Any
    scorer: RewardScorer
    env: Any
    prompts: EncodedPrompts
    tokenizer: Any
    rewards_fn: Callable[..., jax.Array]


def require_artifacts(config) -> tuple[Path, Path]:
    """(policy dir, reward-model dir) of ``config.hh``; a missing one is a UsageError naming its command."""
    policy_dir, rm_dir = Path(config.hh.policy_path), Path(config.hh.rm_workdir)
    if not (policy_dir / "config.json").exists():
        raise UsageError(
            f"no SFT policy export at {policy_dir} (config.json missing); run `{SFT_COMMAND}` first"
        )
    if not (rm_dir / "rm_spec.json").exists():
        command = RM_COMMANDS.get(str(config.hh.get("reward_scorer", "callback")), RM_COMMAND)
        raise UsageError(f"no reward model at {rm_dir} (rm_spec.json missing); run `{command}` first")
    return policy_dir, rm_dir


def load_components(config) -> HHComponents:
    """Loads the SFT policy, the reward model and the prompt set named by ``config.hh`` (clear errors if the
    SFT export or the reward model do not exist yet, naming the command that makes them)."""
    from infalign_jax.data.encoders import prompt_encoder
    from infalign_jax.data.hh import build_or_load
    from infalign_jax.models import from_pretrained
    from infalign_jax.reward import load_reward_model

    h = config.hh
    policy_dir, rm_dir = require_artifacts(config)
    if h.num_prompts < 1 or h.max_prompt_len < 2 or h.max_new_tokens < 1:
        raise UsageError(
            "hh.num_prompts >= 1, hh.max_prompt_len >= 2 and hh.max_new_tokens >= 1 are required"
        )
    model, tokenizer = from_pretrained(policy_dir)
    if tokenizer is None:
        raise UsageError(f"{policy_dir} has no tokenizer files")
    eos = model.config.eos_token_ids or (
        (tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ()
    )
    if not eos:
        raise UsageError(f"{policy_dir}: the policy defines no EOS token")
    if h.max_prompt_len + h.max_new_tokens > model.config.max_position_embeddings:
        raise UsageError(
            f"hh.max_prompt_len + hh.max_new_tokens = {h.max_prompt_len + h.max_new_tokens} exceeds the "
            f"policy's max_position_embeddings {model.config.max_position_embeddings}"
        )
    pad_id = model.config.pad_token_id or 0
    bos_id = model.config.bos_token_id if model.config.bos_token_id is not None else tokenizer.bos_token_id
    policy = LMPolicy(
        model.config,
        int(h.max_new_tokens),
        tuple(int(e) for e in eos),
        int(pad_id),
        shared_prompt=bool(config.get("shared_prompt", True)),
    )
    # Scorer selection (issue 16 Sec. 4): "callback" re-tokenizes text on the host (any reward model);
    # "in_step" scores the policy's own tokens inside the step (a policy-token reward model).
    scorer = make_scorer(
        str(h.get("reward_scorer", "callback")),
        load_reward_model(rm_dir, config.seed),
        tokenizer,
        int(bos_id),
        policy.eos_ids,
    )

    source = build_or_load(h.split, h.data_dir, h.manual_dir or None)
    if len(source) < h.num_prompts:
        raise UsageError(f"HH split {h.split!r} has {len(source)} records; hh.num_prompts={h.num_prompts}")
    records = [source[i] for i in range(h.num_prompts)]
    encode = prompt_encoder(tokenizer, h.max_prompt_len, bos_id=int(bos_id))
    prompts = encode_prompts(
        [r["id"] for r in records],
        [encode(r)["prompt_tokens"].tolist() for r in records],
        [r["prompt"] for r in records],
        scorer,
        h.max_prompt_len,
        int(pad_id),
    )
    params = jax.tree.map(np.asarray, jax.device_get(model.params()))
    rewards_fn = jax.jit(functools.partial(reference_rewards, policy, scorer), static_argnames="k")
    return HHComponents(policy, params, scorer, scorer.env(), prompts, tokenizer, rewards_fn)


def files_digest(root: Path, files: Iterable[Path]) -> str:
    """sha256 over the names (relative to ``root``) and contents of ``files`` (regular files, sorted)."""
    digest = hashlib.sha256()
    for f in sorted(p for p in files if p.is_file()):
        digest.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def table_meta(config) -> dict:
    """What a calibration table depends on (stored in its meta.json, checked when training): besides the
    paths, digests of the policy's weights and of the reward model's content (spec + saved arrays), so that
    an SFT export or a reward model rewritten in place does not pass as the one the table was built for."""
    from infalign_jax.reward import weights_digest

    h = config.hh
    policy_dir, rm_dir = Path(h.policy_path), Path(h.rm_workdir)
    return {
        "policy_path": str(policy_dir.resolve()),
        "rm_workdir": str(rm_dir.resolve()),
        "policy_weights_sha256": files_digest(policy_dir, policy_dir.glob("*.safetensors")),
        # The reward model's content, not its Orbax files: those differ for every save of the same weights
        # (timestamps, random file names), and a deterministic rerun of train_rm refused the table.
        "rm_weights_sha256": weights_digest(rm_dir),
        "split": h.split,
        "max_prompt_len": int(h.max_prompt_len),
        "max_new_tokens": int(h.max_new_tokens),
        "seed": int(config.seed),
    }


def open_table(config, prompt_ids):
    """The offline table of ``config.hh.table_dir``, checked against the config and the prompt set."""
    from infalign_jax.ctrl.table import load_table

    path = Path(config.hh.table_dir)
    if not (path / "meta.json").exists():
        raise UsageError(f"no calibration table at {path}; run `{CALIBRATE_COMMAND} --workdir {path}` first")
    table = load_table(path)
    if table.k != config.num_ref:
        raise UsageError(
            f"calibration table {path} holds K={table.k} rewards per prompt, config num_ref={config.num_ref}"
        )
    want = table_meta(config)
    stale = {k: (table.meta.get(k), v) for k, v in want.items() if k != "seed" and table.meta.get(k) != v}
    if stale:
        name, (have, need) = next(iter(stale.items()))
        raise UsageError(
            f"calibration table {path} was built for {name}={have!r}, config has {need!r}; rebuild it in a "
            f"new directory: `{CALIBRATE_COMMAND} --workdir NEW`, then train with --config.hh.table_dir=NEW"
        )
    missing = sorted(set(np.asarray(prompt_ids).tolist()) - set(table.prompt_ids.tolist()))
    if missing:
        raise UsageError(
            f"calibration table {path} lacks {len(missing)} of the prompts (e.g. id {missing[0]}); "
            f"run `{CALIBRATE_COMMAND} --workdir {path}` to complete it"
        )
    return table


def build_problem(config, step_cfg) -> CtrlProblem:
    """The CLI's HH task: LM policy initialized at π_ref = the SFT export, MiniLM reward, offline table."""
    parts = load_components(config)
    table = open_table(config, parts.prompts.ids) if step_cfg.reference == "offline" else None
    if config.prompts_per_step > len(parts.prompts):
        raise UsageError(f"prompts_per_step={config.prompts_per_step} > hh.num_prompts={len(parts.prompts)}")
    final_eval = None
    if config.hh.eval_samples > 0 and table is not None:
        final_eval = lambda params: evaluate(
            parts, table, params, config.hh.eval_samples, config.seed, config.hh.calibration_batch_prompts
        )
    return CtrlProblem(
        policy=parts.policy,
        scorer=parts.scorer,
        params=parts.params,
        ref_params=parts.params,
        env=parts.env,
        batch=PromptBatches(parts.prompts, int(config.prompts_per_step), table),
        final_eval=final_eval,
        export=functools.partial(export_policy, parts),
    )


def export_policy(parts: HHComponents, params, path: Path) -> None:
    """Writes the trained policy ``params`` (host pytree) with the SFT tokenizer to ``path`` in the
    transformers layout (``models.from_pretrained`` and transformers load it); replaces an earlier export."""
    from infalign_jax.models import save_pretrained
    from infalign_jax.models.hf_io import model_from_params

    save_pretrained(model_from_params(parts.policy.config, params), parts.tokenizer, path, overwrite=True)


def chunked_rewards(
    parts: HHComponents, params, k: int, chunk: int, key: jax.Array, chunk_ids: Iterable[int]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(idx, rewards [len(idx), k])`` for chunks of ``chunk`` prompts: K samples per prompt of the
    policy with ``params``, scored. Chunk ``c`` holds prompts ``c·chunk ..`` and uses ``fold_in(key, c)``;
    the last chunk is padded to the fixed shape (one compilation)."""
    n = len(parts.prompts)
    for c in chunk_ids:
        idx = np.arange(c * chunk, min((c + 1) * chunk, n))
        rows = np.concatenate([idx, np.full(chunk - idx.size, idx[-1])])
        r = parts.rewards_fn(params, parts.env, parts.prompts.rows(rows), jax.random.fold_in(key, c), k=k)
        yield idx, np.asarray(r)[: idx.size]


def evaluate(parts: HHComponents, table, params, num_samples: int, seed: int, chunk: int) -> dict:
    """Fresh samples of the trained policy on the whole prompt set, calibrated against the table.

    ``u_mean`` estimates the win rate P[r(y) > r(z)] + ½P[=] of a policy sample y over a π_ref sample z
    (0.5 for π = π_ref; paper Sec. 4 calibrated reward)."""
    key = jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 2**31 - 1))
    n = len(parts.prompts)
    r, u = [], []
    for idx, r_ps in chunked_rewards(parts, params, num_samples, chunk, key, range(-(-n // chunk))):
        r.append(r_ps)
        u.append(np.asarray(calibrate(r_ps, table.lookup(parts.prompts.ids[idx]))))
    r, u = np.concatenate(r), np.concatenate(u)
    return {
        "eval": {
            "prompts": n,
            "samples_per_prompt": num_samples,
            "u_mean": float(u.mean()),
            "reward_mean": float(r.mean()),
            "ref_reward_mean": float(table.lookup(parts.prompts.ids).mean()),
        }
    }
