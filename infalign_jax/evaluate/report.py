"""From cached rewards to the evaluation report: win rates with bootstrap CIs over prompts, paired
differences between policies, the Monte-Carlo KL(π‖π_ref) with its standard error, the stdout table and the
plots (paper Sec. 5: inference-time win rate against KL).

Pure functions of host arrays; :func:`summarize` is what the CLI writes to ``eval.json``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from infalign_jax.evaluate.estimator import inference_win_rate


def bootstrap_indices(num_prompts: int, resamples: int, seed: int) -> np.ndarray:
    """int [B, P]: B resamples of the P prompts with replacement (NumPy ``default_rng(seed)``). Every
    statistic of one report uses the same resamples, so differences are paired bootstraps."""
    return np.random.default_rng(seed).integers(0, num_prompts, size=(resamples, num_prompts))


def mean_ci(values_p: np.ndarray, idx_bp: np.ndarray, level: float = 0.95) -> tuple[float, list[float]]:
    """The mean over prompts and its percentile bootstrap CI (``idx_bp`` from :func:`bootstrap_indices`)."""
    values_p = np.asarray(values_p, np.float64)
    means_b = values_p[idx_bp].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(means_b, [tail, 100.0 - tail])
    return float(values_p.mean()), [float(lo), float(hi)]


def kl_estimate(logratio_pm: np.ndarray) -> tuple[float, float | None]:
    """KL(π‖π_ref) ≈ mean of log π(y|x) − log π_ref(y|x) over the policy's own samples y (sequence level:
    summed over response tokens), and its standard error over prompts: std of the per-prompt means / √P
    (prompts are the independent units; None for one prompt)."""
    logratio_pm = np.asarray(logratio_pm, np.float64)
    per_prompt = logratio_pm.mean(axis=1)
    p = per_prompt.size
    se = float(per_prompt.std(ddof=1) / math.sqrt(p)) if p > 1 else None
    return float(logratio_pm.mean()), se


def summarize(
    rewards: Mapping[str, Mapping[str, np.ndarray]],
    logratios: Mapping[str, np.ndarray],
    procedures: Sequence[str],
    reference: str,
    resamples: int,
    seed: int,
) -> dict:
    """The report's results from host arrays.

    rewards[side][judge]: [P, M] rewards of every side (``reference`` and each policy) under every judge.
    logratios[policy]: [P, M] sequence log-ratios log π − log π_ref of the policy's samples.
    Returns ``{"win_rates": [...], "paired_differences": [...], "kl": {...}, "per_prompt": {...}}``:
    a win-rate entry per (policy, judge, procedure) with its 95% bootstrap CI over prompts; a paired
    difference per unordered policy pair (same prompts, same reference samples, same resamples); the KL
    estimate per policy; and the per-prompt win rates (for re-analysis).
    """
    policies = [s for s in rewards if s != reference]
    judges = list(rewards[reference])
    num_prompts = next(iter(rewards[reference].values())).shape[0]
    idx_bp = bootstrap_indices(num_prompts, resamples, seed)
    per_prompt: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    win_rates = []
    for pol in policies:
        per_prompt[pol] = {}
        for judge in judges:
            per_prompt[pol][judge] = {}
            for proc in procedures:
                w_p = inference_win_rate(rewards[pol][judge], rewards[reference][judge], proc)
                per_prompt[pol][judge][proc] = w_p
                mean, ci = mean_ci(w_p, idx_bp)
                win_rates.append(
                    {"policy": pol, "judge": judge, "procedure": proc, "win_rate": mean, "ci95": ci}
                )
    diffs = []
    for a, b in itertools.combinations(policies, 2):
        for judge in judges:
            for proc in procedures:
                mean, ci = mean_ci(per_prompt[a][judge][proc] - per_prompt[b][judge][proc], idx_bp)
                diffs.append(
                    {"policy": a, "baseline": b, "judge": judge, "procedure": proc, "diff": mean, "ci95": ci}
                )
    kl = {}
    for pol in policies:
        mean, se = kl_estimate(logratios[pol])
        kl[pol] = {"mean": mean, "se": se}
    return {
        "win_rates": win_rates,
        "paired_differences": diffs,
        "kl": kl,
        "per_prompt": {
            pol: {j: {p: v.tolist() for p, v in d.items()} for j, d in jd.items()}
            for pol, jd in per_prompt.items()
        },
    }


def format_table(report: dict) -> str:
    """The stdout table: per policy its KL ± SE, then per judge and procedure the win rate [95% CI]; then
    the paired differences."""
    lines = []
    for j in report.get("judges", []):
        acc = j.get("pairwise_accuracy")
        ci = j.get("ci95")
        acc_text = (
            "not recorded" if acc is None else f"{acc:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
        )
        lines.append(f"judge {j['name']}: held-out pairwise accuracy {acc_text}")
    header = f"{'policy':<24} {'KL (± SE)':<20} {'judge':<20} {'procedure':<10} {'win rate [95% CI]'}"
    lines += ["", header, "-" * len(header)]
    for w in report["win_rates"]:
        kl = report["kl"][w["policy"]]
        kl_text = f"{kl['mean']:.4f}" + (f" ± {kl['se']:.4f}" if kl["se"] is not None else "")
        lines.append(
            f"{w['policy']:<24} {kl_text:<20} {w['judge']:<20} {w['procedure']:<10} "
            f"{w['win_rate']:.4f} [{w['ci95'][0]:.4f}, {w['ci95'][1]:.4f}]"
        )
    if report["paired_differences"]:
        header = f"{'policy − baseline':<40} {'judge':<20} {'procedure':<10} {'diff [95% CI]'}"
        lines += ["", header, "-" * len(header)]
        for d in report["paired_differences"]:
            lines.append(
                f"{d['policy'] + ' − ' + d['baseline']:<40} {d['judge']:<20} {d['procedure']:<10} "
                f"{d['diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
            )
    return "\n".join(lines)


def plot(report: dict, path: str | Path) -> None:
    """Two panels per judge: the win rate of every policy per procedure (95% CI bars), and the win rate
    against the KL estimate (one line per procedure over the policies, sorted by KL). Written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from infalign_jax.io_utils import atomic_write_bytes

    judges = [j["name"] for j in report["judges"]]
    procedures = report["procedures"]
    policies = [p["name"] for p in report["policies"]]
    rows = {(w["policy"], w["judge"], w["procedure"]): w for w in report["win_rates"]}
    fig, axes = plt.subplots(len(judges), 2, figsize=(11, 3.6 * len(judges)), squeeze=False)
    width = 0.8 / max(len(policies), 1)
    for row, judge in zip(axes, judges, strict=True):
        ax = row[0]
        for i, pol in enumerate(policies):
            w = [rows[(pol, judge, p)] for p in procedures]
            mean = np.array([r["win_rate"] for r in w])
            err = np.abs(np.array([r["ci95"] for r in w]).T - mean)
            ax.bar(
                np.arange(len(procedures)) + (i - (len(policies) - 1) / 2) * width,
                mean,
                width,
                yerr=err,
                capsize=2,
                label=pol,
            )
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(procedures)), procedures)
        ax.set_ylabel("win rate vs π_ref")
        ax.set_title(f"judge {judge}")
        ax.legend(fontsize=7)
        ax = row[1]
        order = sorted(policies, key=lambda p: report["kl"][p]["mean"])
        kl = np.array([report["kl"][p]["mean"] for p in order])
        for proc in procedures:
            w = [rows[(pol, judge, proc)] for pol in order]
            mean = np.array([r["win_rate"] for r in w])
            err = np.abs(np.array([r["ci95"] for r in w]).T - mean)
            ax.errorbar(kl, mean, yerr=err, marker="o", capsize=2, label=proc)
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
        ax.set_xlabel("KL(π‖π_ref) (nats, Monte-Carlo)")
        ax.set_ylabel("win rate vs π_ref")
        ax.set_title(f"judge {judge}: win rate vs KL")
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
