"""Where the LM update's time goes: an XLA op-level profile of the CTRL update phase, grouped by kind of work.

    python benchmarks/update_profile.py [--prompt-len 256 --new-tokens 64 --prompts 8 --samples 8]
        [--repeats 5] [--json FILE]

The peers benchmark (benchmarks/peers) reports the update phase's achieved FLOP/s as a fraction of this
machine's f32 matmul rate (issue 17 goal: >= 60%). This script says where the rest goes. It jits
``phase_update`` (π forward + backward, π_ref forward, AdamW; shared-prompt log-probs, the default) on the
8.9M-parameter Llama of ``benchmarks/sampler.py`` (inputs: ``ctrl_step.update_fixture``), runs it
``--repeats`` times under ``jax.profiler.trace`` and reads the trace: every XLA CPU thunk (one HLO instruction
or fusion of the compiled update) with its duration. Each is classified from the compiled HLO text:

- ``matmul``: a dot / convolution, or a fusion containing one (YNNPACK / Eigen matmuls);
- ``reduction``: a fusion or instruction containing a reduce (log-softmax over the vocabulary, RMSNorm,
  attention softmax, sums of the loss) and no dot;
- ``elementwise``: any other fusion (activations, RoPE, Adam's moment updates, casts);
- ``data movement``: copy, transpose, gather, scatter, slices, concatenate, pad, broadcast, select;
- ``other``: the rest (custom calls, RNG, control flow).

Printed (and written with ``--json``): per class the share of thunk time, the top instructions with their
shapes, the update's achieved FLOP/s on the FLOPs it needs (the peers benchmark's count from the model shape,
``benchmarks/peers/common.py``) and that of the matmul thunks alone, next to this machine's f32 matmul rate
measured in the same process (a 2048² jitted matmul, as benchmarks/peers measures it).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

DATA_MOVEMENT = (
    "copy",
    "transpose",
    "gather",
    "scatter",
    "slice",
    "dynamic-slice",
    "dynamic-update-slice",
    "concatenate",
    "pad",
    "broadcast",
    "select",
    "reshape",
    "bitcast",
    "iota",
)


def hlo_shapes(hlo_text: str) -> dict[str, str]:
    """``{instruction name: result shape}`` (e.g. ``f32[4096,8192]``) of every instruction."""
    out = {}
    for m in re.finditer(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)", hlo_text, re.M):
        out[m.group(1)] = m.group(2).split("{")[0]
    return out


def hlo_kinds(hlo_text: str) -> dict[str, str]:
    """``{instruction name: class}`` for every instruction of the entry and fused computations: a fusion is
    classified by the ops of its fused computation (see the module docstring)."""
    comps: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        m = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*\))?.*\{\s*$", line)
        if m and "=" not in line.split("{")[0]:
            current = m.group(1)
            comps[current] = []
            continue
        if current is not None and "=" in line:
            comps[current].append(line)
    op_re = re.compile(r"=\s*(?:\S+\s+)?([a-z][\w\-]*)\(")

    def ops(lines):
        out = []
        for ln in lines:
            m = op_re.search(ln.split(", metadata")[0])
            if m:
                out.append(m.group(1))
        return out

    def classify(op_names: list[str]) -> str:
        if any(o in ("dot", "convolution") for o in op_names):
            return "matmul"
        if any(o in ("reduce", "reduce-window") for o in op_names):
            return "reduction"
        if op_names and all(
            o in DATA_MOVEMENT or o in ("parameter", "constant", "tuple", "get-tuple-element")
            for o in op_names
        ):
            return "data movement"
        return "elementwise"

    kinds = {}
    for lines in comps.values():
        for ln in lines:
            m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=", ln)
            if not m:
                continue
            name = m.group(1)
            op = (ops([ln]) or ["?"])[0]
            if op == "fusion":
                called = re.search(r"calls=%?([\w.\-]+)", ln)
                kinds[name] = classify(ops(comps.get(called.group(1), []))) if called else "elementwise"
            elif op in ("dot", "convolution"):
                kinds[name] = "matmul"
            elif op in ("reduce", "reduce-window"):
                kinds[name] = "reduction"
            elif op in DATA_MOVEMENT:
                kinds[name] = "data movement"
            elif op in ("parameter", "constant", "tuple", "get-tuple-element"):
                kinds[name] = "none"
            else:
                kinds[name] = (
                    "other"
                    if op in ("custom-call", "rng", "while", "conditional", "call")
                    else ("elementwise")
                )
    return kinds


def thunk_times(trace_dir: Path) -> dict[str, float]:
    """``{thunk name: total seconds}`` from the profiler's trace (XLA CPU thunks of the traced calls)."""
    files = sorted(trace_dir.rglob("*.trace.json.gz"))
    if not files:
        raise SystemExit(f"no trace written under {trace_dir}")
    events = json.load(gzip.open(files[-1]))["traceEvents"]
    skip = ("ThreadpoolListener", "ThunkExecutor", "end: ", "$", "PjitFunction", "CommonPjRt", "Pjrt")
    out: dict[str, float] = collections.defaultdict(float)
    for e in events:
        name = e.get("name", "")
        runtime = " " in name or "::" in name  # PjRt / thread-pool bookkeeping, not an HLO instruction
        if e.get("ph") == "X" and "dur" in e and not name.startswith(skip) and not runtime:
            out[name] += e["dur"] * 1e-6
    return out


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """This machine's f32 matmul FLOP/s (median of ``repeats`` jitted n×n products)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ctrl_step import update_fixture

    from infalign_jax.ctrl.lm import LMPolicy
    from infalign_jax.ctrl.train_step import phase_update

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5, help="profiled calls")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the breakdown here")
    args = ap.parse_args()

    model_cfg, tx, cfg, state, batch, samples, scores, calib = update_fixture(args)
    policy = LMPolicy(model_cfg, args.new_tokens, (2,), 0, shared_prompt=True)
    fn = jax.jit(lambda st: phase_update(policy, tx, cfg, st, batch, {"samples": samples}, scores, calib))
    compiled = fn.lower(state).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan")))
    kinds, shapes = hlo_kinds(compiled.as_text()), hlo_shapes(compiled.as_text())
    jax.block_until_ready(fn(state))  # warm up
    wall = []
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(state))
                wall.append(time.perf_counter() - t0)
        thunks = thunk_times(Path(tmp))
    rate = matmul_rate()
    sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
    from common import param_counts  # benchmarks/peers/common.py: the peers benchmark's FLOP count

    counts = param_counts()
    tokens = args.prompts * (args.prompt_len + args.samples * args.new_tokens)  # shared-prompt tokens
    scored = args.prompts * args.samples * args.new_tokens
    needed = 8.0 * (counts["body"] * tokens + counts["head"] * scored)  # π fwd+bwd (6) + π_ref fwd (2)
    by_class: dict[str, float] = collections.defaultdict(float)
    top: dict[str, list] = collections.defaultdict(list)
    for name, sec in thunks.items():
        kind = kinds.get(name, kinds.get(name.split(":")[0], "unmatched"))
        by_class[kind] += sec
        top[kind].append((sec, name))
    total = sum(by_class.values())
    call = statistics.median(wall)
    print(
        f"update phase, P={args.prompts} x S={args.samples}, prompt {args.prompt_len} + {args.new_tokens}: "
        f"{1e3 * call:.0f} ms per call (median of {args.repeats}, profiled); FLOPs needed "
        f"{needed / 1e9:.0f} G (peers' count) -> {needed / call / 1e9:.1f} GFLOP/s = "
        f"{needed / call / rate:.0%} of this machine's f32 matmul rate {rate / 1e9:.1f} GFLOP/s "
        f"(XLA's cost analysis reports {flops / 1e9:.0f} G, below that count: not used)"
    )
    print(f"thunk time per call {1e3 * total / args.repeats:.0f} ms (summed over threads)")
    result = {
        "ms_per_call": 1e3 * call,
        "flops_needed": needed,
        "xla_cost_analysis_flops": flops,
        "matmul_gflops": rate / 1e9,
        "classes": {},
    }
    for kind, sec in sorted(by_class.items(), key=lambda kv: -kv[1]):
        names = ", ".join(
            f"{n} {shapes.get(n, '?')} {1e3 * s / args.repeats:.0f} ms"
            for s, n in sorted(top[kind], reverse=True)[:4]
        )
        print(f"  {kind:14s} {sec / total:6.1%}  {1e3 * sec / args.repeats:7.1f} ms/call   top: {names}")
        result["classes"][kind] = {"share": sec / total, "ms_per_call": 1e3 * sec / args.repeats}
    if by_class.get("matmul"):
        mm = by_class["matmul"] / args.repeats
        print(
            f"matmul thunks alone: {needed / mm / 1e9:.1f} GFLOP/s on the FLOPs needed "
            f"({needed / mm / rate:.0%} of the matmul rate)"
        )
        result["matmul_thunks_gflops"] = needed / mm / 1e9
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
