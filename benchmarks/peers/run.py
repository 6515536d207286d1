"""Peer benchmark: the project vs google-tunix 0.1.7 vs TRL 1.16 / transformers, side by side, one run.

    bash benchmarks/peers/setup.sh                      # once: the peers' own venvs (pinned, lock files)
    .venv/bin/python benchmarks/peers/run.py [--shapes small hh] [--repeats 3] [--json out.json]

One random 8.9M-parameter Llama (6 layers, hidden 256, FFN 768, 8/4 heads, vocab 8192, untied, rope θ 1e6;
built by ``benchmarks/sampler.py``'s ``model_config``) is written with ``models.save_pretrained`` into a temp
directory; each side loads it in its own process and venv (``project_driver.py`` in the project's venv,
``tunix_driver.py``, ``trl_driver.py`` in ``benchmarks/peers/.venvs``). All cells run interleaved: round r
sends every cell's command once, side after side, so load from other processes hits all alike; round 0
(``--warmup``) is the first call (compilation, warm-up) and is reported separately; the steady state is the
median (and range) of the next ``--repeats`` rounds. Every round also times a large jitted f32 matmul (the
machine's limit) in this process.

Workloads (fp32, EOS disabled everywhere) at each shape of ``common.SHAPES`` (small: 8 prompts of 32 tokens,
HH-like: 8 prompts of 256 tokens; 64 new tokens):
- best-of-N sampling (T 0.8, top-k 50, top-p 0.95): tokens/s by wall clock and by process CPU time, and
  prefill + 1 token vs N — project ``Sampler`` vs tunix ``Sampler`` vs transformers ``generate``;
- one RL step (T 1, β 0.04, AdamW, one update per batch, S = 8 samples per prompt): project ``kl_mode=k1``
  vs TRL ``RLOOTrainer``; project ``k3`` vs tunix GRPO (``advantage_estimator="rloo"``,
  ``kl_loss_mode="low_var_kl"``) and TRL ``GRPOTrainer``; the update phase alone where a side exposes it.
Ratios are project ÷ peer advantages (> 1: the project is faster), the median ratio with the range from the
extremes. The project's update phase is also given as achieved FLOP/s (8 · matmul params · tokens: π
forward + backward and π_ref forward; prompt tokens once per prompt on the shared-prompt path) and as a
fraction of the matmul throughput. Output: a markdown table on stdout, everything in ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

VENVS = HERE / ".venvs"
DRIVERS = {"project": "project_driver.py", "tunix": "tunix_driver.py", "trl": "trl_driver.py"}
LABELS = {"project": "project", "tunix": "tunix 0.1.7", "trl": "TRL 1.16 / transformers"}
PROJECT_ALGOS = ("k1", "k3", "k1/full", "k3/full")


def parse_args(argv=None) -> argparse.Namespace:
    from infalign_jax.cli import UsageError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=list(common.SHAPES), help=f"of {sorted(common.SHAPES)}")
    p.add_argument("--sides", nargs="+", default=list(DRIVERS), help=f"of {list(DRIVERS)}")
    p.add_argument(
        "--project-algos",
        nargs="+",
        default=list(PROJECT_ALGOS),
        help="project RL cells: k1, k3 (the config's default update path) and k1/full, k3/full "
        "(shared_prompt=False; skipped when the project has no such flag)",
    )
    p.add_argument("--workloads", nargs="+", default=["sample", "prefill", "rl"], help="sample prefill rl")
    p.add_argument("--repeats", type=int, default=3, help="steady-state rounds after the warm-up")
    p.add_argument("--warmup", type=int, default=1, help="warm-up rounds (reported as the first call)")
    p.add_argument("--matmul-n", type=int, default=2048, help="n of the n x n f32 matmul (the limit)")
    p.add_argument("--json", type=Path, default=None, help="write the full report here")
    p.add_argument("--markdown", type=Path, default=None, help="write the table here")
    p.add_argument("--seed", type=int, default=0, help="weights seed")
    p.add_argument(
        "--rerender",
        type=Path,
        default=None,
        help="run nothing: rebuild the report and table from a saved --json report's raw answers",
    )
    p.add_argument("--tunix-python", default=str(VENVS / "tunix" / "bin" / "python"))
    p.add_argument("--trl-python", default=str(VENVS / "trl" / "bin" / "python"))
    args = p.parse_args(argv)
    for name, values, allowed in (
        ("--shapes", args.shapes, common.SHAPES),
        ("--sides", args.sides, DRIVERS),
        ("--project-algos", args.project_algos, PROJECT_ALGOS),
        ("--workloads", args.workloads, ("sample", "prefill", "rl")),
    ):
        if bad := [v for v in values if v not in allowed]:
            raise UsageError(f"{name}: unknown {bad[0]!r}; expected some of {list(allowed)}")
    if "project" not in args.sides:
        raise UsageError("--sides must include project (every ratio is project / peer)")
    if args.repeats < 1 or args.warmup < 0 or args.matmul_n < 1:
        raise UsageError("--repeats must be >= 1, --warmup >= 0, --matmul-n >= 1")
    if not 0 <= args.seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32), got {args.seed}")
    for path in (args.json, args.markdown):
        if path is not None and path.is_dir():
            raise UsageError(f"{path} is a directory")
    if args.rerender is not None and not args.rerender.is_file():
        raise UsageError(f"--rerender: no such file {args.rerender}")
    return args


def cells(args) -> list[dict]:
    """Every (shape, workload, side) command of one round, in the order they run."""
    out = []
    for name in args.shapes:
        shape = common.SHAPES[name]
        if "sample" in args.workloads:
            for n in shape.samples:
                for side in args.sides:
                    out.append(
                        dict(
                            side=side,
                            op="sample",
                            kind="sample",
                            shape=name,
                            n=n,
                            max_new_tokens=shape.new_tokens,
                        )
                    )
        if "prefill" in args.workloads:
            for n in shape.prefill_ns:
                for side in args.sides:
                    out.append(
                        dict(side=side, op="sample", kind="prefill", shape=name, n=n, max_new_tokens=1)
                    )
        if "rl" in args.workloads:
            for side in args.sides:
                algos = args.project_algos if side == "project" else common.RL_ALGOS[side]
                for algo in algos:
                    out.append(dict(side=side, op="rl", kind="rl", shape=name, algo=algo))
    return out


def cell_key(cell: dict) -> str:
    what = f"N={cell['n']}" if cell["op"] == "sample" else cell["algo"]
    return f"{cell['shape']}/{cell['kind']}/{what}/{cell['side']}"


def aggregate(records: dict, warmup: int) -> dict:
    """Per cell: the first call(s) and the steady-state summaries of wall, cpu and (where given) update time.
    ``records``: cell key -> list of the driver's answers, one per round."""
    out = {}
    for key, answers in records.items():
        good = [a for a in answers if "error" not in a]
        errors = [a["error"] for a in answers if "error" in a]
        steady = good[warmup:] if len(good) == len(answers) else []
        entry = {
            "first_wall": good[0]["wall"] if good and warmup else None,
            "wall": common.summarize([a["wall"] for a in steady]),
            "cpu": common.summarize([a["cpu"] for a in steady]),
            "errors": errors,
        }
        for extra in ("update", "ref", "update_with_ref"):
            if steady and all(extra in a for a in steady):
                entry[extra] = common.summarize([a[extra] for a in steady])
        info = {k: v for k, v in (good[0] if good else {}).items() if k in ("step_mode", "shared_prompt")}
        entry.update(info)
        out[key] = entry
    return out


def throughput(summary: dict, tokens: int) -> dict | None:
    """Tokens/s summary from a seconds summary (min seconds -> max tokens/s)."""
    if not summary or summary.get("median") is None:
        return None
    return {
        "median": tokens / summary["median"],
        "min": tokens / summary["max"],
        "max": tokens / summary["min"],
    }


def report(cells_summary: dict, matmul: dict, args, shared_default) -> dict:
    """Ratios (project / peer), throughputs and the update phase against the matmul limit."""
    out = {"cells": cells_summary, "matmul": matmul, "ratios": {}, "throughput": {}, "update_vs_limit": {}}
    get = lambda *parts: cells_summary.get("/".join(parts))
    for name in args.shapes:
        shape = common.SHAPES[name]
        for n in shape.samples:
            tokens = shape.prompts * n * shape.new_tokens
            for side in args.sides:
                c = get(name, "sample", f"N={n}", side)
                if c and c["wall"]["median"] is not None:
                    out["throughput"][f"{name}/N={n}/{side}"] = {
                        "wall": throughput(c["wall"], tokens),
                        "cpu": throughput(c["cpu"], tokens),
                    }
            proj = out["throughput"].get(f"{name}/N={n}/project")
            for side in args.sides:
                peer = out["throughput"].get(f"{name}/N={n}/{side}")
                if side != "project" and proj and peer:
                    out["ratios"][f"{name}/sample/N={n}/project÷{side}"] = {
                        k: common.ratio(proj[k], peer[k], higher_is_better=True) for k in ("wall", "cpu")
                    }
        for n in shape.prefill_ns:
            proj = get(name, "prefill", f"N={n}", "project")
            for side in args.sides:
                peer = get(name, "prefill", f"N={n}", side)
                if side != "project" and proj and peer:
                    out["ratios"][f"{name}/prefill/N={n}/project÷{side}"] = {
                        "wall": common.ratio(proj["wall"], peer["wall"], higher_is_better=False)
                    }
        for algo, peers in common.MATCHED.items():
            for project_algo in (algo, f"{algo}/full"):
                proj = get(name, "rl", project_algo, "project")
                if not proj:
                    continue
                for peer_key in peers:
                    side, peer_algo = peer_key.split("/")
                    peer = get(name, "rl", peer_algo, side)
                    if peer:
                        r = {
                            k: common.ratio(proj[k], peer[k], higher_is_better=False) for k in ("wall", "cpu")
                        }
                        if "update" in proj and "update_with_ref" in peer:
                            r["update"] = common.ratio(proj["update"], peer["update_with_ref"], False)
                        out["ratios"][f"{name}/rl/{project_algo}÷{side}/{peer_algo}"] = r
                if "update" in proj and matmul.get("flops_per_s"):
                    shared = proj.get("shared_prompt")
                    flops = common.update_flops(shape, bool(shared))
                    achieved = flops / proj["update"]["median"]
                    out["update_vs_limit"][f"{name}/{project_algo}"] = {
                        "shared_prompt": shared,
                        "tokens": common.update_tokens(shape, bool(shared)),
                        "flops": flops,
                        "achieved_flops_per_s": achieved,
                        "fraction_of_matmul": achieved / matmul["flops_per_s"]["median"],
                    }
    out["shared_prompt_default"] = shared_default
    return out


def _cell_time(c, field="wall", scale=1.0, digits=2):
    return common.fmt_range(c.get(field) if c else None, scale, digits)


def markdown(rep: dict, args) -> str:
    """The README table: one row per workload and shape, one column per side, then the ratios."""
    sides = args.sides
    header = (
        ["shape", "workload"] + [LABELS[s] for s in sides] + [f"project ÷ {LABELS[s]}" for s in sides[1:]]
    )
    rows = []
    cells_ = rep["cells"]
    for name in args.shapes:
        shape = common.SHAPES[name]
        label = f"{name} (P {shape.prompts}, prompt {shape.prompt_len}, +{shape.new_tokens})"
        for n in shape.samples:
            vals = [
                common.fmt_range((rep["throughput"].get(f"{name}/N={n}/{s}") or {}).get("wall"), 1, 0)
                for s in sides
            ]
            ratios = [
                common.fmt_range((rep["ratios"].get(f"{name}/sample/N={n}/project÷{s}") or {}).get("wall"))
                for s in sides[1:]
            ]
            rows.append([label, f"sampling N={n}, tokens/s (wall)"] + vals + ratios)
            vals = [
                common.fmt_range((rep["throughput"].get(f"{name}/N={n}/{s}") or {}).get("cpu"), 1, 0)
                for s in sides
            ]
            ratios = [
                common.fmt_range((rep["ratios"].get(f"{name}/sample/N={n}/project÷{s}") or {}).get("cpu"))
                for s in sides[1:]
            ]
            rows.append([label, f"sampling N={n}, tokens/s (CPU time)"] + vals + ratios)
        for n in shape.prefill_ns:
            vals = [_cell_time(cells_.get(f"{name}/prefill/N={n}/{s}"), "wall", 1e3, 0) for s in sides]
            ratios = [
                common.fmt_range((rep["ratios"].get(f"{name}/prefill/N={n}/project÷{s}") or {}).get("wall"))
                for s in sides[1:]
            ]
            rows.append([label, f"prefill + 1 token, N={n}, ms"] + vals + ratios)
        for algo, peers in common.MATCHED.items():
            for project_algo in (algo, f"{algo}/full"):
                proj = cells_.get(f"{name}/rl/{project_algo}/project")
                if not proj:
                    continue
                path = "shared prompt" if proj.get("shared_prompt") else "full prompt per sample"
                if proj.get("shared_prompt") is None:
                    path = "the only path"
                for field, what in (("wall", "RL step, s"), ("update", "of which update, s")):
                    vals, ratios = [], []
                    for s in sides:
                        if s == "project":
                            vals.append(_cell_time(proj, field))
                            continue
                        peer_algos = [k.split("/")[1] for k in peers if k.startswith(s + "/")]
                        peer = cells_.get(f"{name}/rl/{peer_algos[0]}/{s}") if peer_algos else None
                        pf = "update_with_ref" if field == "update" else "wall"
                        vals.append(
                            f"{_cell_time(peer, pf)} ({peer_algos[0]})" if peer and peer.get(pf) else "—"
                        )
                        r = (
                            rep["ratios"].get(f"{name}/rl/{project_algo}÷{s}/{peer_algos[0]}")
                            if peer_algos
                            else None
                        )
                        ratios.append(common.fmt_range((r or {}).get(field)))
                    rows.append(
                        [label, f"{what} — project {project_algo} ({path})"] + vals + ratios[: len(sides) - 1]
                    )
                first = [common.fmt_num(proj.get("first_wall"), 1)]
                for s in sides[1:]:
                    peer_algos = [k.split("/")[1] for k in peers if k.startswith(s + "/")]
                    peer = cells_.get(f"{name}/rl/{peer_algos[0]}/{s}") if peer_algos else None
                    first.append(common.fmt_num(peer.get("first_wall"), 1) if peer else "—")
                rows.append(
                    [label, f"first RL step (compile / warm-up), s — {project_algo}"]
                    + first
                    + [""] * (len(sides) - 1)
                )
    return common.markdown_table(header, rows)


def build_model_dir(tmp: Path, seed: int) -> tuple[Path, int]:
    """Writes the benchmark Llama (random weights from ``seed``) with ``save_pretrained``; returns
    (directory, parameter count)."""
    import importlib.util

    import jax
    import numpy as np
    from flax import nnx

    from infalign_jax.models import RopeConfig, Transformer, save_pretrained

    spec = importlib.util.spec_from_file_location("bench_sampler", HERE.parent / "sampler.py")
    bench_sampler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_sampler)
    m = common.MODEL
    shape = argparse.Namespace(
        vocab=m["vocab"],
        hidden=m["hidden"],
        ffn=m["ffn"],
        layers=m["layers"],
        heads=m["heads"],
        kv_heads=m["kv_heads"],
        prompt_len=common.MAX_POSITIONS,
        max_new_tokens=0,
    )
    config = bench_sampler.model_config(shape).replace(rope=RopeConfig(theta=m["rope_theta"]))
    model = Transformer(config, rngs=nnx.Rngs(seed))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return save_pretrained(model, None, tmp / "model"), n_params


class Driver:
    """One side's long-lived driver process (its own venv), spoken to a JSON line at a time."""

    def __init__(self, side: str, python: str, model_dir: Path, log: Path):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.side, self.log = side, log
        self.proc = subprocess.Popen(
            [python, str(HERE / DRIVERS[side]), str(model_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
            env=env,
            cwd=str(HERE.parents[1]),
        )
        self.info = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if (payload := common.parse_result(line)) is not None:
                return payload
        tail = self.log.read_text()[-2000:]
        raise RuntimeError(
            f"the {self.side} driver exited (code {self.proc.wait()}); its stderr ends:\n{tail}"
        )

    def send(self, cmd: dict) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(common.encode_command("quit") + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def time_matmul(n: int, reps: int = 3) -> list[float]:
    """Seconds of ``reps`` calls of a jitted n x n f32 matmul (after one compiling call)."""
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(f(a, b))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(a, b))
        times.append(time.perf_counter() - t)
    return times


def full_report(records, matmul_times, args, meta: dict) -> dict:
    """The report of the rounds run so far (``meta``: run facts — versions, load, start time...)."""
    matmul = {"n": args.matmul_n, "seconds": common.summarize(matmul_times)}
    matmul["flops_per_s"] = throughput(matmul["seconds"], common.matmul_flops(args.matmul_n))
    rep = report(aggregate(records, args.warmup), matmul, args, meta.get("shared_prompt_default"))
    rep.update(
        meta,
        finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        load_average_after=os.getloadavg(),
        cpu_count=os.cpu_count(),
        params_matmul=common.param_counts()["matmul"],
        shapes={n: common.shape_dict(common.SHAPES[n]) for n in args.shapes},
        repeats=args.repeats,
        warmup=args.warmup,
        sampling=common.SAMPLING,
        beta=common.BETA,
        lr=common.LR,
        raw=records,
    )
    return rep


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rerender is not None:
        return rerender(args)
    from infalign_jax.cli import UsageError
    from infalign_jax.io_utils import atomic_write_json

    pythons = {"project": sys.executable, "tunix": args.tunix_python, "trl": args.trl_python}
    for side in args.sides:
        if not Path(pythons[side]).exists():
            raise UsageError(f"no {side} venv at {pythons[side]}: run `bash benchmarks/peers/setup.sh` first")
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load_average_before": os.getloadavg(),
        "command": "python benchmarks/peers/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    records, matmul_times = {}, []
    with tempfile.TemporaryDirectory(prefix="peers_") as tmp:
        model_dir, meta["params"] = build_model_dir(Path(tmp), args.seed)
        print(f"model: {meta['params'] / 1e6:.2f}M parameters in {model_dir}", flush=True)
        drivers = {}
        try:
            for side in args.sides:
                drivers[side] = Driver(side, pythons[side], model_dir, Path(tmp) / f"{side}.log")
                print(f"{side}: ready {drivers[side].info.get('versions')}", flush=True)
            meta["versions"] = {side: d.info.get("versions") for side, d in drivers.items()}
            meta["shared_prompt_default"] = shared = drivers["project"].info["versions"][
                "shared_prompt_default"
            ]
            todo = [
                c
                for c in cells(args)
                if c["side"] != "project" or "/full" not in c.get("algo", "") or shared is not None
            ]
            records.update({cell_key(c): [] for c in todo})
            # Shape after shape (each complete before the next), cells round-robin within a shape.
            for name in args.shapes:
                for r in range(args.warmup + args.repeats):
                    matmul_times += time_matmul(args.matmul_n)
                    for cell in (c for c in todo if c["shape"] == name):
                        key = cell_key(cell)
                        if any("error" in a for a in records[key]):
                            continue  # failed before: not retried
                        cmd = {k: v for k, v in cell.items() if k not in ("side", "kind")}
                        t = time.perf_counter()
                        answer = drivers[cell["side"]].send({**cmd, "seed": r + 1})
                        records[key].append(answer)
                        note = answer.get("error") or f"{answer['wall']:.2f} s"
                        print(f"{name} round {r} {key}: {note} ({time.perf_counter() - t:.1f} s)", flush=True)
                    if args.json:  # the rounds so far: a run stopped early still leaves its numbers
                        atomic_write_json(
                            args.json, {**full_report(records, matmul_times, args, meta), "partial": True}
                        )
        finally:
            for d in drivers.values():
                d.close()
            if any(d.proc.returncode not in (0, None) for d in drivers.values()):
                for d in drivers.values():
                    print(f"--- {d.side} stderr tail ---\n{d.log.read_text()[-1500:]}", file=sys.stderr)
    return emit({**full_report(records, matmul_times, args, meta), "partial": False}, args)


META_KEYS = (
    "started",
    "finished",
    "load_average_before",
    "load_average_after",
    "cpu_count",
    "command",
    "params",
    "versions",
    "shared_prompt_default",
    "shapes",
    "repeats",
    "warmup",
    "partial",
)


def rerender(args) -> int:
    """``--rerender``: the report of a saved run recomputed from its raw answers (e.g. after a fix of the
    arithmetic), nothing run."""
    saved = json.loads(args.rerender.read_text())
    try:
        args.shapes, args.warmup, args.repeats = list(saved["shapes"]), saved["warmup"], saved["repeats"]
        args.sides = list(saved["versions"])
        cells_ = aggregate(saved["raw"], args.warmup)
        rep = report(cells_, saved["matmul"], args, saved.get("shared_prompt_default"))
    except (KeyError, TypeError) as e:
        from infalign_jax.cli import UsageError

        raise UsageError(f"--rerender: {args.rerender} is not a run.py --json report ({e!r})") from e
    rep.update({k: saved[k] for k in META_KEYS if k in saved}, raw=saved["raw"], rerendered=True)
    rep.update(
        params_matmul=common.param_counts()["matmul"],
        sampling=common.SAMPLING,
        beta=common.BETA,
        lr=common.LR,
    )
    return emit(rep, args)


def emit(rep: dict, args) -> int:
    """Prints the table and the limit line; writes ``--json`` / ``--markdown``."""
    from infalign_jax.io_utils import atomic_write_json

    table = markdown(rep, args)
    limit = ", ".join(
        f"{k}: {v['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s = {100 * v['fraction_of_matmul']:.0f}%"
        for k, v in rep["update_vs_limit"].items()
    )
    gflops = common.fmt_range(rep["matmul"]["flops_per_s"], 1e-9, 1)
    print(
        f"\n{table}\n\nf32 matmul {rep['matmul']['n']}^2: {gflops} GFLOP/s; "
        f"project update phase vs it: {limit or '—'}"
    )
    print(
        f"load average before / after: {rep.get('load_average_before')} / {rep.get('load_average_after')} "
        f"({rep.get('cpu_count')} CPUs)"
    )
    if args.json:
        atomic_write_json(args.json, rep)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    from infalign_jax.cli import run_main

    sys.exit(run_main(main))
