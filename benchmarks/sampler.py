"""Sampler throughput: our vmapped sampler vs transformers ``generate`` (PyTorch CPU), same weights.

    .venv/bin/python benchmarks/sampler.py [--hf-python PY] [--threads 0|1] [--prompt-len 32] [--json]

A random ~10M-parameter Llama-style model is built with :class:`infalign_jax.models.Transformer`, written
with ``save_pretrained`` and loaded by ``transformers.AutoModelForCausalLM`` in a subprocess running
``--hf-python`` (default: this Python, ``sys.executable``; pass another venv's Python with torch and
transformers, ``pip install -r requirements-bench.txt``, to keep torch out of this venv). Both sides sample
the same batch (B prompts x N samples, same prompt length and ``max_new_tokens``) with the same settings
(temperature, top-k, top-p); EOS is disabled on both through ``min_new_tokens = max_new_tokens``, so every
sequence runs the full length. Steady state: the first call (compile / warm-up) is reported separately, then
the median of ``--repeats`` calls. Prefill vs N: calls with ``max_new_tokens=1`` (prefill + first token) for
several N — ours runs each prompt once, transformers once per (prompt, sample).

Each call is timed by wall clock and by process CPU time (``*_cpu`` keys). ``--threads 0`` (default) lets
both libraries use every core; ``--threads 1`` asks both for one thread, which torch honours exactly, while
XLA:CPU still runs independent ops of a program concurrently (our CPU time is ~1.5x our wall time there), so
with ``--threads 1`` the CPU-time ratio is the conservative one.
Output: ``{"ours_tokens_per_s", "hf_tokens_per_s", "ratio", ...}`` with ``--json``, else a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EOS = 2

HF_SCRIPT = r"""
import json, statistics, sys, time
import torch, transformers
args = json.loads(sys.argv[1])
if args["threads"]:
    torch.set_num_threads(args["threads"])
torch.manual_seed(args["seed"])
model = transformers.AutoModelForCausalLM.from_pretrained(args["model_dir"], dtype=torch.float32)
model.eval()
prompts = torch.tensor(args["prompts"], dtype=torch.long)

def run(n, max_new):
    with torch.inference_mode():
        t, c = time.perf_counter(), time.process_time()
        out = model.generate(
            input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
            num_return_sequences=n, max_new_tokens=max_new, min_new_tokens=max_new,
            temperature=args["temperature"], top_k=args["top_k"], top_p=args["top_p"],
            eos_token_id=args["eos"], pad_token_id=0,
        )
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    assert out.shape == (prompts.shape[0] * n, prompts.shape[1] + max_new), out.shape
    return wall, cpu

first = run(args["n"], args["max_new_tokens"])
times = [run(args["n"], args["max_new_tokens"]) for _ in range(args["repeats"])]
prefill = {}
for n in args["prefill_ns"]:
    run(n, 1)
    prefill[str(n)] = [run(n, 1) for _ in range(args["repeats"])]
print(json.dumps({"first": first, "times": times, "prefill": prefill, "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "transformers": transformers.__version__}))
"""


def model_config(args):
    from infalign_jax.models import ModelConfig

    return ModelConfig.llama(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.ffn,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        max_position_embeddings=max(256, args.prompt_len + args.max_new_tokens),
        tie_embeddings=False,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=0,
    )


def time_ours(model, prompts, args, sampling) -> dict:
    from infalign_jax.sampling import Sampler, SamplingConfig

    sampler = Sampler(model, eos_ids=(EOS,), pad_id=0, length_buckets=(args.prompt_len,))
    config = SamplingConfig(**sampling, min_new_tokens=args.max_new_tokens)

    def run(n, max_new, seed):
        t, c = time.perf_counter(), time.process_time()
        out = sampler.sample(prompts, n=n, max_new_tokens=max_new, seed=seed, config=config)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        assert out.lengths.min() == max_new, "a sequence stopped early"
        return wall, cpu

    first = run(args.n, args.max_new_tokens, 0)
    times = [run(args.n, args.max_new_tokens, s) for s in range(1, args.repeats + 1)]
    prefill = {}
    for n in args.prefill_ns:
        run(n, 1, 0)  # compiles this shape
        prefill[str(n)] = [run(n, 1, s) for s in range(1, args.repeats + 1)]
    return {"first": first, "times": times, "prefill": prefill}


def time_hf(model, prompts, args, sampling) -> dict:
    from infalign_jax.models import save_pretrained

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        save_pretrained(model, None, model_dir)
        hf_args = dict(
            model_dir=str(model_dir),
            prompts=prompts,
            n=args.n,
            max_new_tokens=args.max_new_tokens,
            repeats=args.repeats,
            prefill_ns=args.prefill_ns,
            eos=EOS,
            seed=args.seed,
            threads=args.threads,
            **sampling,
        )
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        cmd = [args.hf_python, "-c", HF_SCRIPT, json.dumps(hf_args)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        print(res.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"transformers subprocess failed with exit code {res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def check_peer(python: str) -> None:
    """Exits 2 with one ``error:`` line unless ``python`` runs and imports torch and transformers."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        res = subprocess.run(
            [python, "-c", "import torch, transformers"], capture_output=True, text=True, env=env
        )
        problem = (
            (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1] if res.returncode else ""
        )
    except OSError as e:
        problem = e.strerror or str(e)
    if problem:
        print(
            f"error: --hf-python {python} cannot import torch and transformers ({problem}); pass the Python "
            "of a venv with them (pip install -r requirements-bench.txt) or --skip-hf",
            file=sys.stderr,
        )
        raise SystemExit(2)


def summarize(side: dict, tokens: int, prefix: str) -> dict:
    med = lambda runs, i: statistics.median(r[i] for r in runs)
    wall, cpu = med(side["times"], 0), med(side["times"], 1)
    return {
        f"{prefix}_tokens_per_s": tokens / wall,
        f"{prefix}_tokens_per_s_cpu": tokens / cpu,
        f"{prefix}_steady_s": wall,
        f"{prefix}_first_call_s": side["first"][0],
        f"{prefix}_compile_s": side["first"][0] - wall,
        f"{prefix}_prefill_s_vs_n": {n: med(runs, 0) for n, runs in side["prefill"].items()},
        f"{prefix}_prefill_cpu_s_vs_n": {n: med(runs, 1) for n, runs in side["prefill"].items()},
    }


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--hf-python",
        default=sys.executable,
        help="Python of the peer (needs torch and transformers; default: this Python)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--batch", type=int, default=8, help="prompts")
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prefill-ns", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--ffn", type=int, default=768)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-hf", action="store_true", help="only time our sampler")
    p.add_argument(
        "--threads",
        type=int,
        choices=(0, 1),
        default=0,
        help="0: each library's default (all cores); 1: single-threaded settings on both sides",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads == 1:  # must precede the first jax import
        # XLA:CPU has no thread-count flag; these make Eigen single-threaded, but the runtime still runs
        # independent ops of one program concurrently (CPU time ~1.5x wall here): compare the *_cpu keys too.
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    import jax
    from flax import nnx

    jax.config.update("jax_enable_compilation_cache", False)  # report real compile times

    from infalign_jax.models import Transformer

    model = Transformer(model_config(args), rngs=nnx.Rngs(args.seed))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    prompts = np.random.default_rng(args.seed).integers(3, args.vocab, (args.batch, args.prompt_len)).tolist()
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    tokens = args.batch * args.n * args.max_new_tokens

    if not args.skip_hf:
        check_peer(args.hf_python)  # before the minutes of timing ours
    report = summarize(time_ours(model, prompts, args, sampling), tokens, "ours")
    report.update(hf_tokens_per_s=None, ratio=None)
    if not args.skip_hf:
        hf = time_hf(model, prompts, args, sampling)
        report.update(summarize(hf, tokens, "hf"))
        report["ratio"] = report["ours_tokens_per_s"] / report["hf_tokens_per_s"]
        report["ratio_cpu"] = report["ours_tokens_per_s_cpu"] / report["hf_tokens_per_s_cpu"]
        report["hf_threads"] = hf["threads"]
        report["versions"] = dict(torch=hf["torch"], transformers=hf["transformers"], jax=jax.__version__)
    report["setup"] = dict(
        params=n_params,
        model=dict(
            vocab=args.vocab,
            hidden=args.hidden,
            ffn=args.ffn,
            layers=args.layers,
            heads=args.heads,
            kv_heads=args.kv_heads,
            tied=False,
        ),
        batch=args.batch,
        n=args.n,
        prompt_len=args.prompt_len,
        max_new_tokens=args.max_new_tokens,
        repeats=args.repeats,
        sampling=sampling,
        eos_disabled_by="min_new_tokens = max_new_tokens (both sides)",
        device=jax.devices()[0].device_kind,
        cpu_count=os.cpu_count(),
        threads=args.threads or "library default",
        load_average=os.getloadavg()[0],
    )
    if args.json:
        print(json.dumps(report))
        return 0
    f = lambda x: "-" if x is None else f"{x:,.1f}"
    print(
        f"{n_params / 1e6:.1f}M params, {args.batch} prompts x {args.n} samples, prompt {args.prompt_len}, "
        f"{args.max_new_tokens} new tokens, {sampling}, threads={args.threads or 'default'}"
    )
    for k in ("tokens_per_s", "tokens_per_s_cpu", "steady_s", "compile_s"):
        print(f"  {k:18s} ours {f(report.get('ours_' + k)):>10s}   hf {f(report.get('hf_' + k)):>10s}")
    print(f"  ratio (wall) {f(report['ratio'])}   ratio (cpu) {f(report.get('ratio_cpu'))}")
    for side in ("ours", "hf"):
        if f"{side}_prefill_s_vs_n" in report:
            row = ", ".join(f"N={n}: {v * 1e3:.1f} ms" for n, v in report[f"{side}_prefill_s_vs_n"].items())
            print(f"  prefill+1 token {side}: {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
