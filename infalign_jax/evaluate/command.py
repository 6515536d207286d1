"""The inference-time win-rate evaluator: sample, judge, cache, report (paper Sec. 5 evaluation protocol).

    python -m infalign_jax.evaluate --policy [NAME=]DIR [--policy ...] --reference DIR \\
        --judge [NAME=]RM_WORKDIR [--judge ...] --samples M --procedures standard,bon:2,won:4 --workdir W \\
        [--split eval] [--seed S] [--prompts P] [--max-prompt-len 64] [--max-new-tokens 32]

For every held-out HH prompt (the ``eval`` split: prompts disjoint from every training prompt, see
:func:`infalign_jax.data.hh.prompt_split`; duplicate prompt texts counted once), M responses are drawn from
each policy and from π_ref with the project's sampler at temperature 1 without truncation
(:class:`infalign_jax.ctrl.lm.LMPolicy`, the CTRL trainer's policy adapter), every sample is scored by every
judge (:class:`infalign_jax.ctrl.lm.RewardScorer`: response tokens → text → the reward model), and the
sequence log-ratio log π(y|x) − log π_ref(y|x) of each policy sample is recorded for the KL estimate. Then
:mod:`~infalign_jax.evaluate.report` computes the exact per-prompt win rates
(:func:`~infalign_jax.evaluate.estimator.inference_win_rate`), bootstrap CIs, paired differences and KL.

Randomness: chunk c of π_ref uses ``fold_in(fold_in(key(seed), 0), c)``; chunk c of EVERY policy uses
``fold_in(fold_in(key(seed), 1), c)`` (common random numbers: two identical policies give identical samples,
and the paired difference of similar policies is less noisy), independent of π_ref's samples, so a policy
sample and a reference sample are never coupled.

Workdir ``W``: ``settings.json`` (everything the numbers depend on, with digests of every model's weights);
``cache/<side>/chunk-NNNNN.npz`` (tokens, mask, rewards per judge and, for policies, the log-ratios of chunk
NNNNN, written atomically when the chunk is complete: a killed evaluation resumes where it stopped and ends
with the same numbers); ``eval.json``; ``win_rates.png``. A rerun with other settings is refused (exit 2,
nothing touched).
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from infalign_jax import run_settings
from infalign_jax.cli import ArgumentParser, UsageError
from infalign_jax.evaluate.estimator import canonical_procedure, parse_selection
from infalign_jax.evaluate.report import format_table, plot, summarize
from infalign_jax.io_utils import (
    atomic_write_bytes,
    atomic_write_json,
    check_directory_path,
    ensure_writable_dir,
)
from infalign_jax.seeds import check_seed, seed_key

DEFAULT_PROCEDURES = ("standard", "bon:2", "bon:4", "won:2", "won:4", "won:8")
REFERENCE = "reference"  # the side name of π_ref in the cache and in rewards
SETTINGS_FILE = "settings.json"
FORMAT = "infalign_jax.evaluate"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What an evaluation depends on. ``policies`` / ``judges``: ``(name, directory)`` pairs; policies and
    the reference are ``models.from_pretrained`` directories (e.g. an SFT ``export/``), judges are
    ``train_rm`` workdirs. ``num_prompts``: the first P distinct prompts of the split (None: all).
    ``batch_prompts``: prompts per jitted sample / score call (the cache's chunk size)."""

    policies: tuple[tuple[str, str], ...]
    reference: str
    judges: tuple[tuple[str, str], ...]
    samples: int
    workdir: str
    procedures: tuple[str, ...] = DEFAULT_PROCEDURES
    split: str = "eval"
    seed: int = 0
    num_prompts: int | None = None
    max_prompt_len: int = 64
    max_new_tokens: int = 32
    batch_prompts: int = 8
    bootstrap: int = 2000
    data_dir: str = "runs/data"
    manual_dir: str | None = None


# ------------------------------------------------------------------------------------------- validation
def _check_config(cfg: EvalConfig) -> tuple[str, ...]:
    """Cheap checks before anything is loaded; returns the canonical procedure names."""
    if not cfg.policies:
        raise UsageError("give at least one --policy")
    if not cfg.judges:
        raise UsageError("give at least one --judge")
    for what, pairs in (("policy", cfg.policies), ("judge", cfg.judges)):
        names = [n for n, _ in pairs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UsageError(f"{what} name {dup[0]!r} is given twice (use NAME=DIR to name them apart)")
        if any(not n for n in names):
            raise UsageError(f"empty {what} name")
    if REFERENCE in [n for n, _ in cfg.policies]:
        raise UsageError(f"a policy cannot be named {REFERENCE!r} (the name of π_ref); use NAME=DIR")
    for name, value in (
        ("samples", cfg.samples),
        ("batch_prompts", cfg.batch_prompts),
        ("bootstrap", cfg.bootstrap),
        ("max_new_tokens", cfg.max_new_tokens),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a positive integer, got {value!r}")
    if cfg.max_prompt_len < 2:
        raise UsageError(f"max_prompt_len must be >= 2 (BOS + one token), got {cfg.max_prompt_len}")
    if cfg.num_prompts is not None and (isinstance(cfg.num_prompts, bool) or cfg.num_prompts < 1):
        raise UsageError(f"prompts must be a positive integer, got {cfg.num_prompts!r}")
    check_seed(cfg.seed)
    if not cfg.procedures:
        raise UsageError("give at least one procedure")
    procedures = tuple(canonical_procedure(p) for p in cfg.procedures)
    for spec in procedures:
        _, n = parse_selection(spec)  # rejects procedures that are not a selection of one of N draws
        if n > cfg.samples:
            raise UsageError(f"procedure {spec!r} draws N={n} of the M={cfg.samples} samples: needs N <= M")
    if len(set(procedures)) != len(procedures):
        raise UsageError(f"a procedure is listed twice: {', '.join(procedures)}")
    for what, path in [("reference", cfg.reference), *((f"policy {n}", p) for n, p in cfg.policies)]:
        if not (Path(path) / "config.json").is_file():
            raise UsageError(
                f"{what}: no model at {path} (config.json missing; a models.from_pretrained dir)"
            )
    for name, path in cfg.judges:
        if not (Path(path) / "rm_spec.json").is_file():
            raise UsageError(
                f"judge {name}: no reward model at {path} (rm_spec.json missing; a train_rm workdir)"
            )
    check_directory_path(cfg.workdir, "workdir")
    return procedures


def _vocab_signature(model, tokenizer, path: str) -> dict:
    if tokenizer is None:
        raise UsageError(f"{path} has no tokenizer files")
    return {
        "vocab_size": int(model.config.vocab_size),
        "tokenizer_vocab": tokenizer.get_vocab(),
        "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
    }


def _check_same_vocab(name: str, path: str, sig: dict, ref_sig: dict, ref_path: str) -> None:
    if sig["vocab_size"] != ref_sig["vocab_size"]:
        raise UsageError(
            f"policy {name} ({path}) has vocab size {sig['vocab_size']}, the reference ({ref_path}) "
            f"{ref_sig['vocab_size']}: they must share one tokenizer and vocabulary"
        )
    if (
        sig["tokenizer_vocab"] != ref_sig["tokenizer_vocab"]
        or sig["special_tokens"] != ref_sig["special_tokens"]
    ):
        a, b = sig["tokenizer_vocab"], ref_sig["tokenizer_vocab"]
        diff = sorted(set(a.items()) ^ set(b.items()))
        example = f" (e.g. token {diff[0][0]!r})" if diff else " (special tokens differ)"
        raise UsageError(
            f"policy {name} ({path}) has another tokenizer than the reference ({ref_path}){example}: "
            "they must share one tokenizer and vocabulary"
        )


def _judge_accuracy(path: str) -> dict:
    """The judge's held-out pairwise accuracy as ``train_rm`` recorded it in its ``eval.json`` (None if
    absent)."""
    f = Path(path) / "eval.json"
    try:
        rec = json.loads(f.read_text())
    except (OSError, ValueError):
        return {"pairwise_accuracy": None, "ci95": None, "n_eval": None}
    return {k: rec.get(k) for k in ("pairwise_accuracy", "ci95", "n_eval")}


# --------------------------------------------------------------------------------------------- loading
@dataclasses.dataclass(eq=False)
class _Side:
    name: str
    path: str
    lm: object  # LMPolicy
    params: object
    stream: int  # 0: π_ref's random stream, 1: the policies' stream


def _load(cfg: EvalConfig):
    """Models, judges, prompts; every mismatch is a UsageError before anything is written."""
    from infalign_jax.ctrl.hh import files_digest
    from infalign_jax.ctrl.lm import LMPolicy, RewardScorer, encode_prompts
    from infalign_jax.data.encoders import prompt_encoder
    from infalign_jax.data.hh import build_or_load
    from infalign_jax.models import from_pretrained
    from infalign_jax.reward import load_reward_model, weights_digest

    ref_model, tok = from_pretrained(cfg.reference)
    ref_sig = _vocab_signature(ref_model, tok, cfg.reference)
    eos = ref_model.config.eos_token_ids or ((tok.eos_token_id,) if tok.eos_token_id is not None else ())
    if not eos:
        raise UsageError(f"{cfg.reference}: the reference defines no EOS token")
    pad_id = int(ref_model.config.pad_token_id or 0)
    bos = ref_model.config.bos_token_id if ref_model.config.bos_token_id is not None else tok.bos_token_id
    if bos is None:
        raise UsageError(f"{cfg.reference}: the reference defines no BOS token")
    lms: dict = {}

    def lm_for(config):  # one LMPolicy (so one compilation) per distinct architecture
        if config not in lms:
            lms[config] = LMPolicy(config, cfg.max_new_tokens, tuple(int(e) for e in eos), pad_id)
        return lms[config]

    models = [(REFERENCE, cfg.reference, ref_model, 0)]
    for name, path in cfg.policies:
        model, ptok = from_pretrained(path)
        _check_same_vocab(name, path, _vocab_signature(model, ptok, path), ref_sig, cfg.reference)
        p_eos = model.config.eos_token_ids or ((ptok.eos_token_id,) if ptok.eos_token_id is not None else ())
        if tuple(p_eos) != tuple(eos):
            raise UsageError(
                f"policy {name} ({path}) ends responses with EOS {p_eos}, the reference with {eos}"
            )
        models.append((name, path, model, 1))
    for name, path, model, _ in models:
        if cfg.max_prompt_len + cfg.max_new_tokens > model.config.max_position_embeddings:
            raise UsageError(
                f"max_prompt_len + max_new_tokens = {cfg.max_prompt_len + cfg.max_new_tokens} exceeds the "
                f"max_position_embeddings {model.config.max_position_embeddings} of {name} ({path})"
            )
    sides = [_Side(n, p, lm_for(m.config), m.params(), s) for n, p, m, s in models]
    scorers = [RewardScorer(load_reward_model(path, 0), tok) for _, path in cfg.judges]

    source = build_or_load(cfg.split, cfg.data_dir, cfg.manual_dir)
    records, seen = [], set()
    for i in range(len(source)):
        rec = source[i]
        if rec["prompt"] not in seen:
            seen.add(rec["prompt"])
            records.append(rec)
            if cfg.num_prompts is not None and len(records) == cfg.num_prompts:
                break
    if not records or (cfg.num_prompts is not None and len(records) < cfg.num_prompts):
        raise UsageError(
            f"HH split {cfg.split!r} has {len(records)} distinct prompts; "
            f"asked for {cfg.num_prompts or 'all'}"
        )
    encode = prompt_encoder(tok, cfg.max_prompt_len, bos_id=int(bos))
    tokens = [encode(r)["prompt_tokens"].tolist() for r in records]
    ids, texts = [r["id"] for r in records], [r["prompt"] for r in records]
    prompts = [encode_prompts(ids, tokens, texts, s, cfg.max_prompt_len, pad_id) for s in scorers]

    digests = {
        "reference": files_digest(Path(cfg.reference), Path(cfg.reference).glob("*.safetensors")),
        "policies": {n: files_digest(Path(p), Path(p).glob("*.safetensors")) for n, p in cfg.policies},
        "judges": {n: weights_digest(p) for n, p in cfg.judges},
    }
    return sides, scorers, prompts, digests


def _settings(cfg: EvalConfig, procedures, prompts, digests) -> dict:
    import hashlib

    ids = np.asarray(prompts[0].ids, np.int64)
    return {
        "format": FORMAT,
        "version": VERSION,
        "reference": {"path": str(Path(cfg.reference).resolve()), "weights_sha256": digests["reference"]},
        "policies": [
            {"name": n, "path": str(Path(p).resolve()), "weights_sha256": digests["policies"][n]}
            for n, p in cfg.policies
        ],
        "judges": [
            {"name": n, "path": str(Path(p).resolve()), "weights_sha256": digests["judges"][n]}
            for n, p in cfg.judges
        ],
        "samples": cfg.samples,
        "procedures": list(procedures),
        "split": cfg.split,
        "seed": cfg.seed,
        "prompts": int(ids.size),
        "prompt_ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest(),
        "max_prompt_len": cfg.max_prompt_len,
        "max_new_tokens": cfg.max_new_tokens,
        "batch_prompts": cfg.batch_prompts,
        "bootstrap": cfg.bootstrap,
        "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
    }


def _claim_workdir(workdir: Path, settings: dict) -> None:
    """Records ``settings`` in a new workdir, or checks them against an existing record (UsageError naming
    the differences: nothing is written then)."""
    path = workdir / SETTINGS_FILE
    if path.exists():
        old = run_settings.read_settings(path)
        changes = run_settings.diffs(
            run_settings.flatten(_flat_lists(old)), run_settings.flatten(_flat_lists(settings))
        )
        if changes:
            raise UsageError(
                f"{workdir} holds an evaluation with other settings ({run_settings.summary(changes)}); "
                "use another --workdir"
            )
        return
    if workdir.exists() and any(workdir.iterdir()):
        raise UsageError(f"{workdir} is not empty and holds no {SETTINGS_FILE}; use a new or empty --workdir")
    ensure_writable_dir(workdir)
    atomic_write_json(path, settings)


def _flat_lists(tree: dict) -> dict:
    """Lists of entries as dicts keyed by position (so a changed policy path is named in the message)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            out[k] = {str(i): x for i, x in enumerate(v)}
        else:
            out[k] = v
    return out


# ------------------------------------------------------------------------------------- sample and score
def _chunk_path(workdir: Path, side_index: int, c: int) -> Path:
    side = REFERENCE if side_index == 0 else f"policy-{side_index - 1:02d}"
    return workdir / "cache" / side / f"chunk-{c:05d}.npz"


def _compute_chunk(cfg, side: _Side, ref: _Side, scorers, prompts, fns, c: int) -> dict:
    chunk = cfg.batch_prompts
    n = len(prompts[0])
    idx = np.arange(c * chunk, min((c + 1) * chunk, n))
    rows = np.concatenate([idx, np.full(chunk - idx.size, idx[-1])])  # fixed shape: one compilation
    key = jax.random.fold_in(jax.random.fold_in(seed_key(cfg.seed), side.stream), c)
    batch = prompts[0].rows(rows)
    samples = fns.sample(side.lm)(side.params, batch, key)
    out = {
        "tokens": np.asarray(samples["tokens"])[: idx.size],
        "mask": np.asarray(samples["mask"])[: idx.size],
    }
    if side is not ref:
        lp = np.asarray(fns.logprob(side.lm)(side.params, batch, samples), np.float64)
        lp_ref = np.asarray(fns.logprob(ref.lm)(ref.params, batch, samples), np.float64)
        out["logratio"] = (lp - lp_ref)[: idx.size]
    for j, scorer in enumerate(scorers):
        r = np.asarray(fns.score(j, scorer)(scorer.rm.state, prompts[j].rows(rows), samples))[: idx.size]
        if not np.isfinite(r).all():
            raise UsageError(
                f"judge {cfg.judges[j][0]} gave a non-finite reward on {side.name}'s samples of prompt id "
                f"{prompts[0].ids[idx[np.argwhere(~np.isfinite(r))[0][0]]]}; nothing of this chunk was stored"
            )
        out[f"rewards_{j}"] = r
    return out


class _Jitted:
    """The jitted sample / log-prob / score functions, one per LMPolicy (architecture) or judge."""

    def __init__(self, samples: int):
        self.samples = samples
        self._cache: dict = {}

    def sample(self, lm):
        key = ("sample", id(lm))
        if key not in self._cache:
            self._cache[key] = jax.jit(lambda params, batch, rng: lm.sample(params, batch, rng, self.samples))
        return self._cache[key]

    def logprob(self, lm):  # sequence log-probability [P, S]: summed over response tokens
        key = ("logprob", id(lm))
        if key not in self._cache:
            self._cache[key] = jax.jit(lambda params, batch, s: lm.logprobs(params, batch, s)[0].sum(-1))
        return self._cache[key]

    def score(self, j, scorer):
        key = ("score", j)
        if key not in self._cache:
            self._cache[key] = jax.jit(scorer)
        return self._cache[key]


def _load_chunk(path: Path, num_judges: int, policy: bool) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise UsageError(f"cache file {path} is damaged ({e}); delete it to recompute that chunk") from None
    need = ["tokens", "mask", *(f"rewards_{j}" for j in range(num_judges))] + (["logratio"] if policy else [])
    if missing := [k for k in need if k not in out]:
        raise UsageError(f"cache file {path} lacks {missing[0]}; delete it to recompute that chunk")
    return out


def cached_arrays(
    workdir: Path, sides: Sequence[str], judges: Sequence[str], num_chunks: int
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """``(rewards, logratios)`` of a complete cache: ``rewards[side][judge]`` float64 [P, M] for every side
    (``sides[0]`` is π_ref, then the policies in the order evaluated), ``logratios[policy]`` [P, M]."""
    rewards: dict[str, dict[str, np.ndarray]] = {}
    logratios: dict[str, np.ndarray] = {}
    for s, name in enumerate(sides):
        parts = [_load_chunk(_chunk_path(workdir, s, c), len(judges), s > 0) for c in range(num_chunks)]
        rewards[name] = {
            judge: np.concatenate([p[f"rewards_{j}"] for p in parts]).astype(np.float64)
            for j, judge in enumerate(judges)
        }
        if s > 0:
            logratios[name] = np.concatenate([p["logratio"] for p in parts])
    return rewards, logratios


# ----------------------------------------------------------------------------------------------- driver
def run_evaluation(cfg: EvalConfig, progress: bool = True) -> dict:
    """Runs (or resumes) the evaluation of ``cfg``; writes ``eval.json`` and ``win_rates.png`` into the
    workdir and returns the report (``eval.json``'s content). Bad input raises :class:`UsageError` before
    anything is written."""
    t0 = time.perf_counter()
    procedures = _check_config(cfg)
    sides, scorers, prompts, digests = _load(cfg)
    workdir = Path(cfg.workdir)
    settings = _settings(cfg, procedures, prompts, digests)
    _claim_workdir(workdir, settings)

    n, chunk = len(prompts[0]), cfg.batch_prompts
    num_chunks = -(-n // chunk)
    todo = [
        (s, c)
        for s in range(len(sides))
        for c in range(num_chunks)
        if not _chunk_path(workdir, s, c).exists()
    ]
    fns = _Jitted(cfg.samples)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo) * chunk * cfg.samples, desc="evaluate", unit="sample", dynamic_ncols=True)
    try:
        for s, c in todo:
            if bar is not None:
                bar.set_postfix_str(sides[s].name)
            out = _compute_chunk(cfg, sides[s], sides[0], scorers, prompts, fns, c)
            buf = io.BytesIO()
            np.savez(buf, **out)
            atomic_write_bytes(_chunk_path(workdir, s, c), buf.getvalue())
            if bar is not None:
                bar.update(chunk * cfg.samples)
    finally:
        if bar is not None:
            bar.close()

    judge_names = [name for name, _ in cfg.judges]
    rewards, logratios = cached_arrays(workdir, [side.name for side in sides], judge_names, num_chunks)
    results = summarize(rewards, logratios, procedures, REFERENCE, cfg.bootstrap, cfg.seed)
    report = {
        "format": FORMAT,
        "version": VERSION,
        "prompts": n,
        "samples": cfg.samples,
        "procedures": list(procedures),
        "split": cfg.split,
        "seed": cfg.seed,
        "bootstrap": {"resamples": cfg.bootstrap, "seed": cfg.seed, "level": 0.95, "unit": "prompt"},
        "reference": {"path": settings["reference"]["path"]},
        "policies": [
            {"name": name, "path": str(Path(path).resolve()), "kl": results["kl"][name]}
            for name, path in cfg.policies
        ],
        "judges": [
            {"name": name, "path": str(Path(path).resolve()), **_judge_accuracy(path)}
            for name, path in cfg.judges
        ],
        "reward_means": {
            side: {judge: float(r.mean()) for judge, r in by_judge.items()}
            for side, by_judge in rewards.items()
        },
        "win_rates": results["win_rates"],
        "paired_differences": results["paired_differences"],
        "kl": results["kl"],
        "per_prompt_win_rates": results["per_prompt"],
        "prompt_ids": np.asarray(prompts[0].ids).tolist(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    plot(report, workdir / "win_rates.png")
    atomic_write_json(workdir / "eval.json", report)
    return report


# -------------------------------------------------------------------------------------------------- CLI
def _named(value: str, what: str) -> tuple[str, str]:
    """``NAME=DIR`` or ``DIR`` (named by the path as given)."""
    name, sep, path = value.partition("=")
    if not sep:
        return value, value
    if not name or not path:
        raise UsageError(f"--{what} {value!r}: expected DIR or NAME=DIR")
    return name, path


def parse_args(argv: Sequence[str] | None = None) -> tuple[EvalConfig, bool]:
    p = ArgumentParser(
        prog="python -m infalign_jax.evaluate",
        description="Inference-time win rate of policies over a reference, judged by reward models.",
    )
    p.add_argument(
        "--policy",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="a policy (models.from_pretrained dir); repeat for several",
    )
    p.add_argument("--reference", required=True, metavar="DIR", help="π_ref (models.from_pretrained dir)")
    p.add_argument(
        "--judge",
        action="append",
        required=True,
        metavar="[NAME=]RM_WORKDIR",
        help="a reward model (train_rm workdir); repeat for several",
    )
    p.add_argument("--samples", type=int, required=True, metavar="M", help="samples per prompt and side")
    p.add_argument(
        "--procedures",
        default=",".join(DEFAULT_PROCEDURES),
        help="comma-separated: standard, bon:N, won:N, kth:K,N (N <= M)",
    )
    p.add_argument("--workdir", required=True, help="cache + eval.json + plots")
    p.add_argument("--split", default="eval", help="HH split of the prompts (default: eval, held out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompts", type=int, default=None, metavar="P", help="only the first P distinct prompts")
    p.add_argument(
        "--max-prompt-len", type=int, default=64, help="policy prompt tokens incl. BOS (as in SFT)"
    )
    p.add_argument("--max-new-tokens", type=int, default=32, help="response length budget")
    p.add_argument("--batch-prompts", type=int, default=8, help="prompts per jitted call (cache chunk)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples over prompts")
    p.add_argument("--data-dir", default="runs/data", help="HH TFDS dataset (built here if missing)")
    p.add_argument(
        "--manual-dir", default=None, help="raw HH-RLHF files (default: data.hh.resolve_manual_dir)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    procedures = tuple(s.strip() for s in _split_procedures(a.procedures))
    cfg = EvalConfig(
        policies=tuple(_named(v, "policy") for v in a.policy),
        reference=a.reference,
        judges=tuple(_named(v, "judge") for v in a.judge),
        samples=a.samples,
        workdir=a.workdir,
        procedures=procedures,
        split=a.split,
        seed=a.seed,
        num_prompts=a.prompts,
        max_prompt_len=a.max_prompt_len,
        max_new_tokens=a.max_new_tokens,
        batch_prompts=a.batch_prompts,
        bootstrap=a.bootstrap,
        data_dir=a.data_dir,
        manual_dir=a.manual_dir,
    )
    return cfg, not a.no_progress


def _split_procedures(text: str) -> list[str]:
    """``standard,bon:2,kth:2,4`` -> ['standard', 'bon:2', 'kth:2,4']: a part that does not start with a
    letter continues the previous spec (the second argument of ``kth:K,N`` or ``rejection:Q,N``)."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if out and part and not part[0].isalpha():
            out[-1] += "," + part
        elif part:
            out.append(part)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from infalign_jax.commands.compilation_cache import enable_compilation_cache

    cfg, progress = parse_args(argv)
    enable_compilation_cache()  # the sampler / scorer compilations are reused by later runs
    report = run_evaluation(cfg, progress=progress)
    print(format_table(report))
    print(f"-> {Path(cfg.workdir) / 'eval.json'}")
    return 0
