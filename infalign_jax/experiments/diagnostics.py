"""Why CTRL does or does not win in the HH-harmless experiment: measurements on its workdir (issue 16 §5).

The experiment (:mod:`infalign_jax.experiments.hh_harmless`) compares methods by their inference-time win
rate at matched KL. When the difference is inside its CI, the question is which link of the chain from the
theory (paper Sec. 3: the optimal tilt of π_ref by Φ(u)/β) to the measurement is weak. This module measures
each link from what the experiment already stored — nothing is sampled or trained again:

1. **The judges** (``judges``): held-out pairwise accuracy, and how often the two judges order two samples of
   the same prompt the same way (:func:`pair_agreement`; 0.5 = unrelated, 1 = the same ranking). A policy is
   trained to raise one judge's quantile; what transfers to another judge is bounded by their agreement.
2. **Theory at the measured KL** (``policies``): for every trained policy, the analytic win rates of the tilt
   ``p ∝ exp(Φ_t(u)/β)`` its method optimizes, at the KL the policy actually reached, against the measured
   ones, and the KL that tilt would need to reach the measured win rate (:func:`kl_needed`): the "KL
   efficiency" of training. The lower tail of u — what worst-of-N punishes — is compared the same way: the
   measured fraction of samples that beat at most one of the M reference samples of their prompt vs the
   tilt's ``E_p[P(Binomial(M, u) <= 1)]`` (:func:`tail_theory`; the binomial accounts for u being estimated
   from M reference samples, so the two are comparable).
3. **Training** (``training``): the calibrated reward on the training prompts over the run (mean, 10%
   quantile), its slope over the last quarter of the run (still rising = more steps would move it), and
   train-prompt vs held-out-prompt mean u (a gap = the policy learned the 64 training prompts, not
   harmlessness).
4. **The estimator** (``power``): the per-prompt standard deviation of each matched-KL difference and the
   number of evaluation prompts a 95% CI of ±0.02, or an 80%-power test of a +0.04 (paper) or of the bandit's
   +0.066 effect, would need (normal approximation, paired over prompts).

CLI (also the experiment's last stage, ``diagnose``)::

    python -m infalign_jax.experiments.diagnostics --workdir runs/hh_harmless [--results results/hh_harmless]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from infalign_jax.errors import UsageError
from infalign_jax.io_utils import atomic_write_bytes, atomic_write_json, ensure_writable_dir

Z95, Z80 = 1.959963984540054, 0.8416212335729143  # standard normal quantiles 0.975, 0.80
EFFECTS = {"paper_low": 0.04, "bandit": 0.066}  # the paper's +4 points; the bandit's 0.876 − 0.810 at KL 0.3
HALF_WIDTH = 0.02
THEORY_GRID = 4096
KL_GRID = np.concatenate([np.linspace(0.002, 0.1, 50), np.linspace(0.1, 3.0, 291)[1:]])
TAIL_WINS = 1  # "beats at most one of the M reference samples of its prompt"
TRAIN_WINDOW = 10  # steps averaged at the start / end of a training curve


def _analytic(procedure: str) -> str:
    """The analytic solver's name of an evaluator procedure (plain sampling is ``identity`` there)."""
    return "identity" if procedure == "standard" else procedure


# -------------------------------------------------------------------------------------------- pure parts
def calibrated(policy_pm: np.ndarray, reference_pn: np.ndarray) -> np.ndarray:
    """[P, M] float64: each policy sample's calibrated reward against the N reference samples of its prompt,
    ``(#{z < r} + ½ #{z = r}) / N`` (paper Sec. 2, the empirical C(x, y))."""
    r = np.asarray(policy_pm, np.float64)[:, :, None]
    z = np.asarray(reference_pn, np.float64)[:, None, :]
    return ((z < r).sum(-1) + 0.5 * (z == r).sum(-1)) / z.shape[-1]


def pair_agreement(a_pm: np.ndarray, b_pm: np.ndarray) -> tuple[float, int]:
    """``(fraction, pairs)``: of all pairs of samples of the same prompt that neither judge ties, the fraction
    both judges order the same way."""
    a, b = np.asarray(a_pm, np.float64), np.asarray(b_pm, np.float64)
    da = np.sign(a[:, :, None] - a[:, None, :])
    db = np.sign(b[:, :, None] - b[:, None, :])
    upper = np.triu(np.ones((a.shape[1], a.shape[1]), bool), 1)  # each unordered pair once
    used = (da != 0) & (db != 0) & upper[None]
    n = int(used.sum())
    return (float((da == db)[used].mean()) if n else float("nan")), n


def tilt_density(t: float, beta: float, cells: int = THEORY_GRID) -> tuple[np.ndarray, np.ndarray]:
    """``(u_c, p_c)``: cell midpoints of [0, 1] and the normalized density of p ∝ exp(Φ_t(u)/β) with
    Φ_t(u) = (e^{tu} − 1)/(e^t − 1) (t = 0: Φ(u) = u), as the analytic solver defines it."""
    u = (np.arange(cells) + 0.5) / cells
    phi = u if abs(t) < 1e-12 else np.expm1(t * u) / np.expm1(t)
    logp = phi / beta
    p = np.exp(logp - logp.max())
    return u, p / p.mean()


def tail_theory(u_c: np.ndarray, p_c: np.ndarray, m: int, wins: int = TAIL_WINS) -> float:
    """``E_p[P(Binomial(m, u) <= wins)]``: the probability that a sample of the tilt beats at most ``wins`` of
    ``m`` reference samples (what the measured tail estimates with m reference samples per prompt)."""
    from math import comb

    cdf = sum(comb(m, k) * u_c**k * (1.0 - u_c) ** (m - k) for k in range(wins + 1))
    return float(np.mean(p_c * cdf))


def kl_needed(kl_k: np.ndarray, win_k: np.ndarray, measured: float) -> float | None:
    """The KL at which the theory curve ``win_k(kl_k)`` (increasing) reaches ``measured``; None when the
    measurement is below the curve's first point (needs less than its smallest KL) or above its last."""
    if not win_k[0] <= measured <= win_k[-1]:
        return None
    return float(np.interp(measured, win_k, kl_k))


def prompts_needed(sd: float) -> dict[str, int]:
    """Evaluation prompts (paired over prompts, normal approximation) for a 95% CI half-width of
    :data:`HALF_WIDTH` and for an 80%-power two-sided 5% test of each effect in :data:`EFFECTS`."""
    out = {f"ci_half_width_{HALF_WIDTH}": int(np.ceil((Z95 * sd / HALF_WIDTH) ** 2))}
    for name, effect in EFFECTS.items():
        out[f"power80_{name}_{effect}"] = int(np.ceil(((Z95 + Z80) * sd / effect) ** 2))
    return out


def curve_stats(values: Sequence[float], window: int = TRAIN_WINDOW) -> dict:
    """Start / end means of a per-step curve and the least-squares slope (per 100 steps, with its standard
    error) over its last quarter."""
    y = np.asarray(values, np.float64)
    tail = y[-max(len(y) // 4, 3) :]
    x = np.arange(tail.size, dtype=np.float64)
    x -= x.mean()
    slope = float((x * (tail - tail.mean())).sum() / (x * x).sum())
    resid = tail - tail.mean() - slope * x
    se = float(np.sqrt((resid**2).sum() / max(tail.size - 2, 1) / (x * x).sum()))
    return {
        "start": float(y[:window].mean()),
        "end": float(y[-window:].mean()),
        "slope_per_100_steps": 100 * slope,
        "slope_se": 100 * se,
        "steps_in_slope": int(tail.size),
    }


# ------------------------------------------------------------------------------------------- the workdir
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}; run the experiment to its end first") from None


def _theory_curves(plan: dict, procedures: Sequence[str]) -> dict:
    """Per calibrated method (identity, ctrl_won, ctrl_bon): the analytic win rate of its tilt on
    :data:`KL_GRID` for every procedure."""
    from infalign_jax.analytic import exponential_at_kl

    curves = {}
    for method, spec in plan["methods"].items():
        t = _transform_t(spec["transform"])
        if t is None:
            continue
        curves[method] = {
            p: np.asarray(exponential_at_kl(_analytic(p), t, KL_GRID).win_rate, np.float64)
            for p in procedures
        }
    return curves


def _transform_t(transform: str) -> float | None:
    """The exponent t of a calibrated transform (identity: 0), None for the raw reward."""
    if transform == "identity":
        return 0.0
    if transform.startswith("exp:"):
        return float(transform.split(":", 1)[1])
    return None


def diagnose(workdir: str | Path) -> dict:
    """The measurements above from a finished experiment ``workdir`` (reads only)."""
    from infalign_jax.analytic import exponential_at_kl
    from infalign_jax.evaluate.command import cached_arrays

    workdir = Path(workdir)
    plan = _read_json(workdir / "plan.json")
    report = _read_json(workdir / "eval" / "eval.json")
    settings = _read_json(workdir / "eval" / "settings.json")
    judges = [j["name"] for j in report["judges"]]
    names = [p["name"] for p in report["policies"]]
    batch = int(settings["batch_prompts"])
    num_chunks = -(-int(report["prompts"]) // batch)
    rewards, _ = cached_arrays(workdir / "eval", ["reference", *names], judges, num_chunks)
    m_ref = rewards["reference"][judges[0]].shape[1]
    procedures = [p for p in ("won:4", "standard") if p in report["procedures"]]
    theory = _theory_curves(plan, procedures)

    # 1. Judges.
    judge_rows = []
    for j in report["judges"]:
        judge_rows.append({k: j.get(k) for k in ("name", "pairwise_accuracy", "ci95", "n_eval")})
    agree = {}
    if len(judges) >= 2:
        for side in ["reference", *names]:
            agree[side] = pair_agreement(rewards[side][judges[0]], rewards[side][judges[1]])[0]
        both = pair_agreement(rewards["reference"][judges[0]], rewards["reference"][judges[1]])
    # 2. Every policy against the theory of its method's tilt at its measured KL.
    win = {(w["policy"], w["judge"], w["procedure"]): w for w in report["win_rates"]}
    policy_rows = []
    for name in names:
        method, i = name.rsplit("_b", 1)
        spec = plan["methods"][method]
        kl = report["kl"][name]
        row = {"policy": name, "method": method, "beta": spec["betas"][int(i)], "kl": kl["mean"]}
        row["kl_se"] = kl["se"]
        row["measured"] = {}
        for j in judges:
            u_pm = calibrated(rewards[name][j], rewards["reference"][j])
            row["measured"][j] = {
                **{p: win[(name, j, p)]["win_rate"] for p in procedures},
                "tail": float(np.mean(u_pm <= (TAIL_WINS + 0.5) / m_ref)),
            }
        t = _transform_t(spec["transform"])
        if t is not None:
            kl_at = float(np.clip(kl["mean"], KL_GRID[0], KL_GRID[-1]))
            point = {
                p: float(np.asarray(exponential_at_kl(_analytic(p), t, kl_at).win_rate)) for p in procedures
            }
            beta_at = float(np.asarray(exponential_at_kl("identity", t, kl_at).beta))
            point["tail"] = tail_theory(*tilt_density(t, beta_at), m_ref)
            row["theory_at_kl"] = point
            row["kl_needed"] = {
                j: {p: kl_needed(KL_GRID, theory[method][p], row["measured"][j][p]) for p in procedures}
                for j in judges
            }
        policy_rows.append(row)
    # 3. Training curves.
    training = {}
    for name in names:
        path = workdir / "ctrl" / name / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "u/mean" in r]
        training[name] = {
            key: curve_stats([r[key] for r in rows]) for key in ("u/mean", "u/q10", "kl/k1_seq") if rows
        }
        training[name]["steps"] = len(rows)
    # 4. The estimator: spread of the matched-KL differences, prompts needed.
    power = _power(report, plan, judges)
    out = {
        "workdir_settings": _read_json(workdir / "experiment.json"),
        "eval_prompts": int(report["prompts"]),
        "eval_samples": int(report["samples"]),
        "reference_samples_per_prompt": m_ref,
        "tail_definition": f"fraction of samples beating at most {TAIL_WINS} of {m_ref} reference samples",
        "judges": judge_rows,
        "judge_pair_agreement": agree,
        "judge_pair_agreement_pairs_reference": both[1] if len(judges) >= 2 else 0,
        "theory_at_solver_kl": {
            m: {p: float(np.interp(plan["solver_kl"], KL_GRID, theory[m][p])) for p in procedures}
            for m in theory
        },
        "policies": policy_rows,
        "training": training,
        "power": power,
        "effects": EFFECTS,
    }
    return out


def _power(report: dict, plan: dict, judges: Sequence[str]) -> list[dict]:
    """Per (judge, procedure) the per-prompt standard deviation of ctrl_won − identity at the KLs both reach
    (interpolated as in :mod:`infalign_jax.experiments.matched_kl`) and the prompts needed."""
    from infalign_jax.experiments.matched_kl import interpolate_per_prompt, overlap

    rows = []
    per_prompt = report["per_prompt_win_rates"]

    def curve(method, judge, proc):
        names = [f"{method}_b{i}" for i in range(len(plan["methods"][method]["betas"]))]
        kl_k = np.array([report["kl"][n]["mean"] for n in names])
        return kl_k, np.array([per_prompt[n][judge][proc] for n in names], np.float64)

    for method, baseline in (("ctrl_won", "identity"), ("ctrl_won", "raw")):
        for judge in judges:
            for proc in report["procedures"]:
                a, b = curve(method, judge, proc), curve(baseline, judge, proc)
                ov = overlap(a[0], b[0])
                if ov is None:
                    continue
                kl = 0.5 * (ov[0] + ov[1])
                d_p = interpolate_per_prompt(*a, kl) - interpolate_per_prompt(*b, kl)
                sd = float(d_p.std(ddof=1))
                rows.append(
                    {
                        "method": method,
                        "baseline": baseline,
                        "judge": judge,
                        "procedure": proc,
                        "kl": kl,
                        "diff": float(d_p.mean()),
                        "sd_per_prompt": sd,
                        "ci95_half_width_now": Z95 * sd / np.sqrt(d_p.size),
                        "prompts_needed": prompts_needed(sd),
                    }
                )
    return rows


# ------------------------------------------------------------------------------------------ the outputs
def markdown(d: dict) -> str:
    """diagnostics.md: one table per measurement."""
    judges = [j["name"] for j in d["judges"]]
    lines = ["# HH-harmless experiment: diagnostics (why the methods do or do not differ)", ""]
    lines += ["## Judges", "", "| judge | held-out pairwise accuracy [95% CI] |", "|---|---|"]
    for j in d["judges"]:
        ci = j["ci95"] or [float("nan")] * 2
        lines.append(f"| {j['name']} | {j['pairwise_accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] |")
    if d["judge_pair_agreement"]:
        ref = d["judge_pair_agreement"]["reference"]
        pol = [v for k, v in d["judge_pair_agreement"].items() if k != "reference"]
        lines += [
            "",
            f"Within-prompt pair agreement of {judges[0]} and {judges[1]} (0.5: unrelated, 1: same order): "
            f"π_ref samples {ref:.3f} ({d['judge_pair_agreement_pairs_reference']} pairs); trained policies' "
            f"samples {min(pol):.3f}–{max(pol):.3f}.",
        ]
    procs = [p for p in ("won:4", "standard") if p in next(iter(d["policies"]))["measured"][judges[0]]]
    lines += ["", "## Theory at the measured KL", ""]
    lines += [
        f"Measured (judge {judges[0]}, the training reward) vs the analytic optimum of the method's own tilt "
        f"at the KL the policy reached; tail = {d['tail_definition']}; KL needed = the KL at which that tilt "
        "reaches the measured win rate.",
        "",
        "| policy | KL | "
        + " | ".join(f"{p} measured / theory | KL needed for {p}" for p in procs)
        + " | tail measured / theory |",
        "|---" * (3 + 2 * len(procs)) + "|",
    ]
    for r in d["policies"]:
        if "theory_at_kl" not in r:
            continue
        meas, th = r["measured"][judges[0]], r["theory_at_kl"]
        cells = []
        for p in procs:
            need = r["kl_needed"][judges[0]][p]
            cells += [f"{meas[p]:.3f} / {th[p]:.3f}", "—" if need is None else f"{need:.3f}"]
        lines.append(
            f"| {r['policy']} | {r['kl']:.3f} | "
            + " | ".join(cells)
            + f" | {meas['tail']:.3f} / {th['tail']:.3f} |"
        )
    lines += [
        "",
        "Theory at the solver's KL: "
        + "; ".join(
            f"{m} " + ", ".join(f"{p} {v:.3f}" for p, v in w.items())
            for m, w in d["theory_at_solver_kl"].items()
        ),
    ]
    lines += ["", "## Training (calibrated reward u on the training prompts)", ""]
    lines += [
        f"First {TRAIN_WINDOW} steps → last {TRAIN_WINDOW} steps (means). The sequence KL (k1, on the "
        "policy's own training samples) shows how early the KL is spent.",
        "",
        "| policy | steps | u mean | slope /100 steps (last quarter) | u q10 | KL (k1) | "
        "held-out u mean (judge " + judges[0] + ") |",
        "|---|---|---|---|---|---|---|",
    ]
    held = {r["policy"]: r["measured"][judges[0]].get("standard") for r in d["policies"]}
    for name, t in d["training"].items():
        if "u/mean" not in t:
            continue
        um, uq, kl = t["u/mean"], t["u/q10"], t["kl/k1_seq"]
        h = held.get(name)
        slope = f"{um['slope_per_100_steps']:+.3f} ± {um['slope_se']:.3f}"
        lines.append(
            f"| {name} | {t['steps']} | {um['start']:.3f} → {um['end']:.3f} | {slope} | "
            f"{uq['start']:.3f} → {uq['end']:.3f} | {kl['start']:.3f} → {kl['end']:.3f} | "
            + ("—" if h is None else f"{h:.3f}")
            + " |"
        )
    lines += [
        "",
        f"## The estimator ({d['eval_prompts']} evaluation prompts × {d['eval_samples']} samples)",
        "",
    ]
    keys = list(d["power"][0]["prompts_needed"]) if d["power"] else []
    lines += [
        "| difference | judge | procedure | KL | diff | per-prompt SD | 95% CI ± now | prompts needed: "
        + " | ".join(keys)
        + " |",
        "|---" * (7 + len(keys)) + "|",
    ]
    for r in d["power"]:
        lines.append(
            f"| {r['method']} − {r['baseline']} | {r['judge']} | {r['procedure']} | {r['kl']:.3f} | "
            f"{r['diff']:+.3f} | {r['sd_per_prompt']:.3f} | {r['ci95_half_width_now']:.3f} | "
            + " | ".join(str(r["prompts_needed"][k]) for k in keys)
            + " |"
        )
    return "\n".join(lines) + "\n"


def write(d: dict, results_dir: str | Path) -> str:
    """Writes diagnostics.json and diagnostics.md into ``results_dir``; ``already complete`` when the same
    diagnostics are there."""
    results_dir = Path(results_dir)
    path = results_dir / "diagnostics.json"
    if path.is_file() and json.loads(path.read_text()) == json.loads(json.dumps(d)):
        return "already complete"
    ensure_writable_dir(results_dir)
    atomic_write_bytes(results_dir / "diagnostics.md", markdown(d).encode())
    atomic_write_json(path, d)
    return "ran"


def main(argv: Sequence[str] | None = None) -> int:
    from infalign_jax.cli import ArgumentParser

    p = ArgumentParser(
        prog="python -m infalign_jax.experiments.diagnostics", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--workdir", required=True, help="a finished hh_harmless experiment's workdir")
    p.add_argument("--results", default=None, help="where to write (default WORKDIR/results)")
    a = p.parse_args(argv)
    d = diagnose(a.workdir)
    status = write(d, a.results or Path(a.workdir) / "results")
    print(markdown(d))
    print(f"-> {status}: {a.results or Path(a.workdir) / 'results'}/diagnostics.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from infalign_jax.cli import run_main

    run_main(main)
