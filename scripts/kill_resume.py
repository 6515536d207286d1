"""Kill-and-resume check of the CTRL trainer (issue 18): SIGKILL a bandit run at N random moments, rerun each
to completion, and compare its final evaluation with an uninterrupted run's.

    python scripts/kill_resume.py [--n 20] [--seed 0] [--workroot DIR] [--report R.md] [--json R.json]

One uninterrupted run first (its wall time T). Then, for each of N moments (drawn from ``--seed``): a fresh
workdir, a run of the same command killed with SIGKILL — at a uniformly random time in [0, 0.95 T) after its
start, or (every third moment) while Orbax writes a checkpoint: once the temporary directory
(``<step>.orbax-checkpoint-tmp-*``) of the save of a randomly chosen step or a later one appears —, then the
same command rerun to completion. A moment passes when the rerun exits 0 and its ``final_eval.json`` equals
the uninterrupted run's outside the timing fields (``time_ms``), and its ``metrics.jsonl`` holds steps
1..num_steps once each with the uninterrupted run's values (outside ``time/``). Prints one line per moment
and ``k/N resumed identically``; writes the reports asked for; exit 0 iff k == N.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The TINY run of issue 18, longer (30 steps, a checkpoint every step) so that moments spread over the loop.
FLAGS = {
    "num_steps": 30,
    "num_samples": 8,
    "num_ref": 8,
    "bandit.num_contexts": 4,
    "prompts_per_step": 4,
    "bandit.num_responses": 16,
    "checkpoint_every": 1,
    "progress": False,
}
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax.checkpoint's temporary step directory (path/atomicity_types.py)


def command(workdir: Path, flags: dict) -> list[str]:
    return [
        sys.executable,
        "-m",
        "infalign_jax.train",
        "--config",
        str(REPO / "configs" / "ctrl_bandit.py"),
        "--workdir",
        str(workdir),
        *(f"--config.{k}={v}" for k, v in flags.items()),
    ]


def without_timings(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "time_ms"}


def metric_rows(workdir: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def saving_now(workdir: Path, from_step: int = 0) -> bool:
    """True while Orbax writes a checkpoint of a step >= ``from_step`` in ``workdir`` (its temporary
    directory ``<step>.orbax-checkpoint-tmp-*`` exists)."""
    try:
        names = [p.name for p in (workdir / "checkpoints").iterdir()]
    except OSError:
        return False
    steps = [n.split(TMP_SUFFIX)[0] for n in names if TMP_SUFFIX in n]
    return any(s.isdigit() and int(s) >= from_step for s in steps)


def rows(workdir: Path) -> int:
    """Rows logged so far in ``workdir/metrics.jsonl`` (complete lines)."""
    try:
        return (workdir / "metrics.jsonl").read_bytes().count(b"\n")
    except OSError:
        return 0


def timed_run(cmd: list[str], workdir: Path) -> tuple[subprocess.CompletedProcess, list[float], float]:
    """Runs ``cmd`` to the end; returns it, the seconds after start at which each metrics row appeared, and
    the wall time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[float] = []
    while proc.poll() is None:
        seen += [time.perf_counter() - t0] * (rows(workdir) - len(seen))
        time.sleep(0.002)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), seen, wall


def kill_at(
    cmd: list[str], workdir: Path, *, after_rows: int, delay: float, save_step: int | None, timeout: float
):
    """Starts ``cmd``; SIGKILLs it ``delay`` seconds after its ``after_rows``-th metrics row appeared (after
    its start for 0), or — with ``save_step`` — once a save of that step or a later one is in progress.
    Returns (what happened, seconds after start, checkpoint steps on disk, whether a save was in progress)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reached = 0.0 if after_rows == 0 else None
    try:
        while proc.poll() is None:
            now = time.perf_counter() - t0
            if now > timeout:
                raise TimeoutError(f"no kill moment within {timeout} s")
            if reached is None and rows(workdir) >= after_rows:
                reached = now
            due = save_step is None and reached is not None and now >= reached + delay
            if due or (save_step is not None and saving_now(workdir, save_step)):
                tmp = saving_now(workdir)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return "killed", now, checkpoint_steps(workdir), tmp
            time.sleep(0.0005)
        what = f"finished first (exit {proc.returncode})"
        return what, time.perf_counter() - t0, checkpoint_steps(workdir), False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def checkpoint_steps(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20, help="number of kill moments")
    p.add_argument("--seed", type=int, default=0, help="seed of the moments")
    p.add_argument("--workroot", type=Path, default=None, help="where the workdirs go (default: a temp dir)")
    p.add_argument("--num-steps", type=int, default=FLAGS["num_steps"])
    p.add_argument("--report", type=Path, default=None, help="markdown report to write")
    p.add_argument("--json", type=Path, default=None, help="JSON report to write")
    args = p.parse_args(argv)
    if args.n < 1 or args.num_steps < 2:
        p.error("--n must be >= 1 and --num-steps >= 2")
    flags = {**FLAGS, "num_steps": args.num_steps}
    root = args.workroot or Path(tempfile.mkdtemp(prefix="kill_resume."))
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)

    ref = root / "uninterrupted"
    res, row_times, wall = timed_run(command(ref, flags), ref)
    if res.returncode != 0 or len(row_times) != flags["num_steps"]:
        print(res.stderr[-3000:], file=sys.stderr)
        return 1
    expected = without_timings(json.loads((ref / "final_eval.json").read_text()))
    expected_rows = metric_rows(ref)
    print(
        f"uninterrupted run: {wall:.1f} s, {flags['num_steps']} steps (first logged at {row_times[0]:.1f} s, "
        f"last at {row_times[-1]:.1f} s)",
        flush=True,
    )

    moments = []
    for i in range(args.n):
        work = root / f"kill{i:02d}"
        if i % 3 == 2:
            save_step, t, plan = rng.randint(1, flags["num_steps"]), None, "during a checkpoint save"
            after, delay = 0, 0.0
        else:
            # A uniformly random time t of the uninterrupted run, replayed by progress (its rows so far, then
            # the time since its last row), not by the clock: the machine's load varies between runs.
            save_step, t, plan = None, rng.uniform(0.0, wall), "at a random time"
            after = sum(r <= t for r in row_times)
            delay = t - (row_times[after - 1] if after else 0.0)
            if after == flags["num_steps"]:  # after the last step: the final save, eval and exit are short
                delay *= 0.5
        what, at, steps, tmp = kill_at(
            command(work, flags),
            work,
            after_rows=after,
            delay=delay,
            save_step=save_step,
            timeout=10 * wall + 60,
        )
        rerun = subprocess.run(command(work, flags), capture_output=True, text=True)
        final = work / "final_eval.json"
        same_eval = rerun.returncode == 0 and final.is_file()
        same_eval = same_eval and without_timings(json.loads(final.read_text())) == expected
        same_rows = rerun.returncode == 0 and metric_rows(work) == expected_rows
        warnings = [ln for ln in rerun.stderr.splitlines() if ln.startswith(("warning:", "error:"))]
        m = {
            "moment": i,
            "plan": plan
            + (f" (step {save_step})" if t is None else f" ({t:.2f} s: {delay:.2f} s after row {after})"),
            "outcome": what,
            "killed_after_s": round(at, 3),
            "checkpoints_on_disk": steps,
            "orbax_tmp_dir_present": tmp,
            "rerun_exit": rerun.returncode,
            "rerun_lines": warnings,
            "final_eval_equal": bool(same_eval),
            "metrics_equal": bool(same_rows),
            "ok": bool(same_eval and same_rows and what == "killed"),
        }
        moments.append(m)
        latest = max(steps) if steps else None
        print(
            f"[{i + 1}/{args.n}] {m['plan']}: {what} at {at:.2f} s (latest checkpoint {latest}, "
            f"saving: {tmp}); rerun exit {rerun.returncode}, final_eval equal {same_eval}, "
            f"metrics equal {same_rows}",
            flush=True,
        )
        if rerun.returncode != 0:
            print(rerun.stderr[-2000:], file=sys.stderr)

    k = sum(m["ok"] for m in moments)
    summary = f"{k}/{args.n} resumed identically"
    print(summary, flush=True)
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} ({platform.machine()}, {platform.system()} {platform.release()})",
        "command": "python scripts/kill_resume.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "flags": flags,
        "uninterrupted_wall_s": round(wall, 2),
        "seed": args.seed,
        "summary": summary,
        "during_save": sum(m["orbax_tmp_dir_present"] for m in moments),
        "moments": moments,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.report:
        lines = [
            f"- date: {report['date']}; machine: {report['machine']}",
            f"- command: `{report['command']}`",
            f"- uninterrupted run: {report['uninterrupted_wall_s']} s wall; result: **{summary}** "
            f"({report['during_save']} kills while an Orbax save was in progress)",
            "",
            "| # | planned | killed after (s) | checkpoints on disk | saving | rerun exit | final_eval equal "
            "| metrics equal | rerun's warning |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in moments:
            lines.append(
                f"| {m['moment']} | {m['plan']} | {m['killed_after_s']} | {m['checkpoints_on_disk'] or '-'} "
                f"| {m['orbax_tmp_dir_present']} | {m['rerun_exit']} | {m['final_eval_equal']} "
                f"| {m['metrics_equal']} | {' '.join(m['rerun_lines']) or '-'} |"
            )
        args.report.write_text("\n".join(lines) + "\n")
    return 0 if k == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
