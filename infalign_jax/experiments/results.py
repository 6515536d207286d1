"""The HH-harmless experiment's results from the evaluation report: summary.json (per-method frontiers and
matched-KL comparisons with paired bootstrap CIs), the frontier figure and a markdown table
(docs/experiment_hh.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from infalign_jax.errors import UsageError
from infalign_jax.evaluate.report import bootstrap_indices
from infalign_jax.experiments.matched_kl import compare_at_kl, matched_kls
from infalign_jax.io_utils import atomic_write_bytes, atomic_write_json, ensure_writable_dir

METHOD_ORDER = ("raw", "identity", "ctrl_won", "ctrl_bon")
# (method, baseline) pairs compared at matched KL: every method against standard RLHF and calibration alone.
PAIRS = (
    ("identity", "raw"),
    ("ctrl_won", "raw"),
    ("ctrl_won", "identity"),
    ("ctrl_bon", "raw"),
    ("ctrl_bon", "identity"),
)


def build_summary(report: dict, plan: dict, settings: dict, compare_kls, stage_seconds: dict) -> dict:
    """summary.json's content. ``report``: the evaluator's eval.json; ``plan``: methods with their β and
    transform; the policy of method m at β index i is named ``f"{m}_b{i}"``."""
    procedures = report["procedures"]
    judges = [j["name"] for j in report["judges"]]
    rows = {(w["policy"], w["judge"], w["procedure"]): w for w in report["win_rates"]}
    num_prompts = len(report["prompt_ids"])
    boot = report[
        "bootstrap"
    ]  # the evaluator's resamples: a comparison on a β point is its paired difference
    idx_bp = bootstrap_indices(num_prompts, int(boot["resamples"]), int(boot["seed"]))
    methods = {}
    curves = {}  # (method, judge, proc) -> (kl_k, win_kp)
    for m in METHOD_ORDER:
        spec = plan["methods"][m]
        points = []
        for i, beta in enumerate(spec["betas"]):
            pol = f"{m}_b{i}"
            kl = report["kl"][pol]
            points.append(
                {
                    "policy": pol,
                    "beta": beta,
                    "kl": kl["mean"],
                    "kl_se": kl["se"],
                    "win_rates": {
                        j: {
                            p: {"win_rate": rows[(pol, j, p)]["win_rate"], "ci95": rows[(pol, j, p)]["ci95"]}
                            for p in procedures
                        }
                        for j in judges
                    },
                }
            )
        methods[m] = {"transform": spec["transform"], "procedure": spec["procedure"], "points": points}
        kl_k = np.array([pt["kl"] for pt in points])
        for j in judges:
            for p in procedures:
                win_kp = np.array([report["per_prompt_win_rates"][pt["policy"]][j][p] for pt in points])
                curves[(m, j, p)] = (kl_k, win_kp)
    comparisons, not_compared = [], []
    for m, b in PAIRS:
        kls = matched_kls(
            curves[(m, judges[0], procedures[0])][0], curves[(b, judges[0], procedures[0])][0], compare_kls
        )
        if not kls:
            not_compared.append({"method": m, "baseline": b, "why": "KL ranges do not overlap"})
        for p in procedures:
            for j in judges:
                for kl in kls:
                    diff, ci = compare_at_kl(*curves[(m, j, p)], *curves[(b, j, p)], kl, idx_bp)
                    comparisons.append(
                        {
                            "procedure": p,
                            "judge": j,
                            "kl": kl,
                            "method": m,
                            "baseline": b,
                            "diff": diff,
                            "ci95": ci,
                        }
                    )
    return {
        "settings": settings,
        "status": "toy-scale pipeline check, not a result" if settings["scale"] == "toy" else "full scale",
        "judges": report["judges"],
        "procedures": procedures,
        "primary_procedure": procedures[0],
        "eval_prompts": num_prompts,
        "eval_samples": report["samples"],
        "plan": {k: v for k, v in plan.items() if k != "methods"},
        "methods": methods,
        "comparisons": comparisons,
        "not_compared": not_compared,
        # The stages that write the results themselves are not in them (their time is in W/stages.json).
        "stage_seconds": {k: v for k, v in stage_seconds.items() if k not in ("results", "diagnose")},
        "bootstrap": {"resamples": int(boot["resamples"]), "seed": int(boot["seed"]), "unit": "prompt"},
    }


def markdown(summary: dict) -> str:
    """results.md: judges, every method's frontier points, the matched-KL comparisons, stage times."""
    lines = [f"# HH-harmless worst-of-N experiment ({summary['status']})", ""]
    lines += ["| judge | held-out pairwise accuracy [95% CI] | n |", "|---|---|---|"]
    for j in summary["judges"]:
        acc, ci = j.get("pairwise_accuracy"), j.get("ci95")
        text = (
            "not recorded" if acc is None else f"{acc:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        )
        lines.append(f"| {j['name']} | {text} | {j.get('n_eval')} |")
    procs = summary["procedures"]
    lines += ["", "Win rate against π_ref [95% CI] per policy (KL ± SE):", ""]
    lines += ["| method | β | KL | judge | " + " | ".join(procs) + " |", "|---" * (4 + len(procs)) + "|"]
    for m, spec in summary["methods"].items():
        for pt in spec["points"]:
            se = "" if pt["kl_se"] is None else f" ± {pt['kl_se']:.3f}"
            for j, wr in pt["win_rates"].items():
                cells = [
                    f"{wr[p]['win_rate']:.3f} [{wr[p]['ci95'][0]:.3f}, {wr[p]['ci95'][1]:.3f}]" for p in procs
                ]
                lines.append(
                    f"| {m} ({spec['transform']}) | {pt['beta']:.4g} | {pt['kl']:.3f}{se} | {j} | "
                    + " | ".join(cells)
                    + " |"
                )
    lines += ["", "Matched-KL differences (method − baseline) [95% paired bootstrap CI]:", ""]
    lines += ["| procedure | judge | KL | method − baseline | diff [95% CI] |", "|---|---|---|---|---|"]
    for c in summary["comparisons"]:
        lines.append(
            f"| {c['procedure']} | {c['judge']} | {c['kl']:.3f} | {c['method']} − {c['baseline']} | "
            f"{c['diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] |"
        )
    for n in summary["not_compared"]:
        lines.append(f"\nnot compared: {n['method']} − {n['baseline']}: {n['why']}")
    lines += ["", "| stage | wall s |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in summary["stage_seconds"].items()]
    return "\n".join(lines) + "\n"


def frontier_png(summary: dict) -> bytes:
    """Win rate against KL per method (95% CI bars), one panel per (judge, procedure)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judges = [j["name"] for j in summary["judges"]]
    procs = summary["procedures"]
    fig, axes = plt.subplots(
        len(judges), len(procs), figsize=(3.2 * len(procs), 3.0 * len(judges)), squeeze=False
    )
    for r, j in enumerate(judges):
        for c, p in enumerate(procs):
            ax = axes[r][c]
            for m, spec in summary["methods"].items():
                pts = sorted(spec["points"], key=lambda pt: pt["kl"])
                kl = np.array([pt["kl"] for pt in pts])
                w = np.array([pt["win_rates"][j][p]["win_rate"] for pt in pts])
                ci = np.array([pt["win_rates"][j][p]["ci95"] for pt in pts]).T
                ax.errorbar(kl, w, yerr=np.abs(ci - w), marker="o", capsize=2, label=m)
            ax.axhline(0.5, color="gray", lw=0.8, ls="--")
            ax.set_title(f"{p}, judge {j}", fontsize=9)
            ax.set_xlabel("KL(π‖π_ref) (nats)")
            if c == 0:
                ax.set_ylabel("win rate vs π_ref")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def write_results(summary: dict, report: dict, results_dir: str | Path) -> str:
    """Writes summary.json, results.md and frontier.png; ``already complete`` (nothing written) when the
    directory holds this summary already. A summary of another experiment there is refused (UsageError)."""
    results_dir = Path(results_dir)
    summary["results_dir"] = str(results_dir)
    path = results_dir / "summary.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("settings") != summary["settings"]:
            raise UsageError(
                f"{results_dir} holds the results of {old.get('settings')}, not {summary['settings']}; "
                "use another --results"
            )
        if old == json.loads(json.dumps(summary)):
            return "already complete"
    ensure_writable_dir(results_dir)
    atomic_write_bytes(results_dir / "frontier.png", frontier_png(summary))
    atomic_write_bytes(results_dir / "results.md", markdown(summary).encode())
    atomic_write_json(results_dir / "summary.json", summary)
    return "ran"
