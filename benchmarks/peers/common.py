"""Pure parts of the peer benchmark (stdlib only: every driver imports this in its own venv).

The driver protocol: a driver is started as ``PYTHON driver.py MODEL_DIR`` and reads one JSON command a
line on stdin, answering each with one JSON line on stdout that starts with ``RESULT_PREFIX`` (libraries
print their own lines there too). Commands:
``{"op": "sample", "shape": NAME, "n": N, "max_new_tokens": L, "seed": s}``,
``{"op": "rl", "shape": NAME, "algo": A, "seed": s}``, ``{"op": "quit"}``. Answers:
``{"wall": s, "cpu": s, ...}`` (``"update": s`` where the peer exposes its update phase) or
``{"error": msg}``.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass

RESULT_PREFIX = "@@peers "
BETA = 0.04  # KL coefficient of every RL step (the β)
LR = 1e-5  # AdamW learning rate of every RL step (one update per batch, so its value does not move the time)
SAMPLING = {"temperature": 0.8, "top_k": 50, "top_p": 0.95}  # best-of-N sampling settings (all sides)
# RL steps sample from the policy itself: temperature 1, no truncation (all sides).


@dataclass(frozen=True)
class Shape:
    """One workload shape: P prompts of ``prompt_len`` tokens, S samples each, ``new_tokens`` per sample."""

    name: str
    prompts: int
    prompt_len: int
    new_tokens: int
    samples: tuple[int, ...]  # N for best-of-N sampling (the RL step uses the first as S)
    prefill_ns: tuple[int, ...]  # N of the prefill + 1 token measurement

    @property
    def rl_samples(self) -> int:
        return self.samples[0]


SHAPES = {
    "small": Shape("small", prompts=8, prompt_len=32, new_tokens=64, samples=(8,), prefill_ns=(1, 8, 32)),
    "hh": Shape("hh", prompts=8, prompt_len=256, new_tokens=64, samples=(8, 16), prefill_ns=(1, 8)),
}
# The model: Llama, 6 layers, hidden 256, FFN 768, 8 query / 4 KV heads, vocab 8192, untied, rope θ = 1e6
# (tunix's Llama3 ignores config.rope_theta and uses 1e6).
MODEL = dict(vocab=8192, hidden=256, ffn=768, layers=6, heads=8, kv_heads=4, rope_theta=1e6)
MAX_POSITIONS = max(s.prompt_len + s.new_tokens for s in SHAPES.values())

# RL algorithms: project k1 is matched with TRL RLOO (KL in the reward, leave-one-out baseline); project k3
# with tunix GRPO (advantage_estimator="rloo", kl_loss_mode="low_var_kl") and TRL GRPO (KL in the loss).
RL_ALGOS = {
    "project": ("k1", "k3"),
    "tunix": ("grpo",),
    "trl": ("rloo", "grpo"),
}
MATCHED = {"k1": ("trl/rloo",), "k3": ("tunix/grpo", "trl/grpo")}
SAMPLERS = {"project": "sampler", "tunix": "sampler", "trl": "generate"}


def encode_command(op: str, **kw) -> str:
    return json.dumps({"op": op, **kw})


def result_line(payload: dict) -> str:
    return RESULT_PREFIX + json.dumps(payload)


def parse_result(line: str) -> dict | None:
    """The payload of a driver's answer line, or None for any other line."""
    if not line.startswith(RESULT_PREFIX):
        return None
    return json.loads(line[len(RESULT_PREFIX) :])


def serve(versions: dict, sample, rl) -> None:
    """A driver's command loop: announce readiness with ``versions``, then answer one JSON command per stdin
    line (``sample`` / ``rl`` handlers; ``quit`` ends it) with one result line. A handler's exception is
    reported as ``{"error": ...}`` to run.py, which records it for that cell and goes on."""
    import sys
    import traceback

    print(result_line({"ready": True, "versions": versions}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        try:
            res = sample(cmd) if cmd["op"] == "sample" else rl(cmd)
        except Exception as e:  # noqa: BLE001 — one failing cell must not end the run
            traceback.print_exc()
            res = {"error": f"{type(e).__name__}: {e}"}
        print(result_line(res), flush=True)


def prompt_ids(shape: Shape, seed: int, vocab: int = MODEL["vocab"]) -> list[list[int]]:
    """The shape's prompts: deterministic pseudo-random token ids in [3, vocab) (no BOS/EOS/pad), the same
    lists on every side (a 64-bit LCG, so no numpy is needed)."""
    state = (seed * 6364136223846793005 + 1442695040888963407 + len(shape.name)) % 2**64
    out = []
    for _ in range(shape.prompts):
        row = []
        for _ in range(shape.prompt_len):
            state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
            row.append(3 + (state >> 33) % (vocab - 3))
        out.append(row)
    return out


def reward_of_tokens(tokens: list[int]) -> float:
    """The RL steps' reward, identical on every side: the fraction of even token ids in the response."""
    return sum(1 for t in tokens if t % 2 == 0) / max(len(tokens), 1)


# ------------------------------------------------------------------------------------------------ arithmetic


def param_counts(model: dict = MODEL) -> dict:
    """Parameter counts of the benchmark Llama: ``total``; ``matmul`` (everything but the input embedding
    table, whose lookup is a gather, not a matmul; norms included), split into ``head`` (the untied LM head)
    and ``body`` (the layers and the final norm)."""
    h, f, layers, v = model["hidden"], model["ffn"], model["layers"], model["vocab"]
    head_dim = h // model["heads"]
    attn = h * h + 2 * h * model["kv_heads"] * head_dim + h * h  # q, k, v, o
    mlp = 3 * h * f  # gate, up, down
    per_layer = attn + mlp + 2 * h  # + two RMSNorm scales
    embed, head = v * h, v * h
    body = layers * per_layer + h  # + final norm
    return {"total": embed + body + head, "matmul": body + head, "body": body, "head": head}


def update_tokens(shape: Shape, shared_prompt: bool) -> int:
    """Tokens the update runs π's and π_ref's layers over: P·S·(T + L), or P·(T + S·L) when each prompt is
    computed once for its S responses (the shared-prompt path)."""
    p, s, t, length = shape.prompts, shape.rl_samples, shape.prompt_len, shape.new_tokens
    return p * (t + s * length) if shared_prompt else p * s * (t + length)


def update_flops(shape: Shape, shared_prompt: bool, counts: dict | None = None) -> float:
    """FLOPs one update phase needs: π forward + backward (6 per parameter and token) and π_ref forward (2):
    the layers over :func:`update_tokens`, the LM head only at the P·S·L scored response positions.
    Attention scores are left out, so it is a lower bound. ``counts``: :func:`param_counts`' dict."""
    counts = param_counts() if counts is None else counts
    scored = shape.prompts * shape.rl_samples * shape.new_tokens
    return 8.0 * (counts["body"] * update_tokens(shape, shared_prompt) + counts["head"] * scored)


def matmul_flops(n: int) -> float:
    """FLOPs of one n x n by n x n matmul."""
    return 2.0 * n**3


# ------------------------------------------------------------------------------------------------ summaries


def summarize(times: list[float]) -> dict:
    """median, min, max and count of a list of seconds (empty: None)."""
    if not times:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times)}


def ratio(project: dict, peer: dict, higher_is_better: bool) -> dict | None:
    """project / peer advantage from two summaries: the median ratio and its range from the extremes.

    ``higher_is_better`` (throughputs): project / peer; else (times): peer / project — so > 1 always means the
    project is faster."""
    if not project or not peer or project.get("median") is None or peer.get("median") is None:
        return None

    def r(a, b):
        return a / b if higher_is_better else b / a

    if higher_is_better:
        lo, hi = r(project["min"], peer["max"]), r(project["max"], peer["min"])
    else:
        lo, hi = r(project["max"], peer["min"]), r(project["min"], peer["max"])
    return {"median": r(project["median"], peer["median"]), "min": lo, "max": hi}


def fmt_num(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def fmt_range(s: dict | None, scale: float = 1.0, digits: int = 2) -> str:
    """'median (min–max)' of a summary or ratio, each value times ``scale``."""
    if not s or s.get("median") is None:
        return "—"
    m, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    return f"{m:,.{digits}f} ({lo:,.{digits}f}–{hi:,.{digits}f})"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def shape_dict(shape: Shape) -> dict:
    return asdict(shape)
