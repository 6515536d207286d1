"""The pure parts of benchmarks/peers (issue 17): parameter / FLOP arithmetic, summaries, ratios, the cell
plan, aggregation, the report and the table, argument checks. The peers themselves are not run here (CI has
no peer venvs)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from infalign_jax.cli import UsageError

PEERS = Path(__file__).resolve().parents[1] / "benchmarks" / "peers"


def _load(name: str):
    sys.path.insert(0, str(PEERS))
    spec = importlib.util.spec_from_file_location(f"peers_{name}", PEERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


common = _load("common")
run = _load("run")


def test_param_counts_match_the_model_the_benchmark_builds():
    # By hand: embed 8192*256 = 2,097,152; per layer q 65,536 + k,v 2*32,768 + o 65,536 + mlp 3*196,608
    # + norms 512 = 786,944; 6 layers 4,721,664; final norm 256; LM head 2,097,152.
    counts = common.param_counts()
    assert counts["total"] == 2_097_152 + 4_721_664 + 256 + 2_097_152 == 8_916_224
    assert counts["matmul"] == 8_916_224 - 2_097_152 == counts["body"] + counts["head"]
    assert counts["body"] == 4_721_920 and counts["head"] == 2_097_152


def test_param_counts_agree_with_the_project_transformer():
    import jax
    import numpy as np
    from flax import nnx

    from infalign_jax.models import ModelConfig, Transformer

    m = dict(vocab=64, hidden=16, ffn=24, layers=2, heads=4, kv_heads=2, rope_theta=1e6)
    cfg = ModelConfig.llama(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=24,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=4,
        tie_embeddings=False,
    )
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert common.param_counts(m)["total"] == n


def test_update_tokens_and_flops():
    small, hh = common.SHAPES["small"], common.SHAPES["hh"]
    assert common.update_tokens(small, shared_prompt=False) == 8 * 8 * (32 + 64) == 6144
    assert common.update_tokens(small, shared_prompt=True) == 8 * (32 + 8 * 64) == 4352
    assert common.update_tokens(hh, shared_prompt=False) == 8 * 8 * 320 == 20480
    assert common.update_tokens(hh, shared_prompt=True) == 8 * (256 + 512) == 6144
    # 6 (π fwd+bwd) + 2 (π_ref fwd) FLOPs per parameter and token: layers over the update's tokens, the LM
    # head over the 8 * 8 * 64 = 4096 scored positions.
    counts = {"body": 1000, "head": 10}
    assert common.update_flops(hh, True, counts) == 8 * (1000 * 6144 + 10 * 4096)
    assert common.update_flops(hh, False, counts) == 8 * (1000 * 20480 + 10 * 4096)
    assert common.update_flops(small, False) == 8.0 * (4_721_920 * 6144 + 2_097_152 * 4096)
    assert common.matmul_flops(2048) == 2 * 2048**3


def test_summarize_and_ratio_directions():
    s = common.summarize([3.0, 1.0, 2.0, 10.0])
    assert s == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}
    assert common.summarize([]) == {"median": None, "min": None, "max": None, "n": 0}
    proj, peer = common.summarize([1.0, 2.0, 3.0]), common.summarize([4.0, 6.0, 8.0])
    # times: peer / project, > 1 means the project is faster; range from the extremes
    assert common.ratio(proj, peer, higher_is_better=False) == {"median": 3.0, "min": 4 / 3, "max": 8.0}
    # throughputs: project / peer
    assert common.ratio(peer, proj, higher_is_better=True) == {"median": 3.0, "min": 4 / 3, "max": 8.0}
    assert common.ratio(proj, common.summarize([]), False) is None


def test_prompt_ids_are_deterministic_in_range_and_seeded():
    shape = common.SHAPES["small"]
    a, b = common.prompt_ids(shape, 1), common.prompt_ids(shape, 1)
    assert a == b and len(a) == 8 and {len(r) for r in a} == {32}
    assert min(min(r) for r in a) >= 3 and max(max(r) for r in a) < 8192
    assert common.prompt_ids(shape, 2) != a
    assert common.reward_of_tokens([2, 3, 4, 5]) == 0.5 and common.reward_of_tokens([]) == 0.0


def test_result_line_round_trip():
    line = common.result_line({"wall": 1.5})
    assert common.parse_result(line + "\n") == {"wall": 1.5}
    assert common.parse_result("some library's own print") is None
    assert common.fmt_range({"median": 1.0, "min": 0.5, "max": 2.0}, 1e3, 0) == "1,000 (500–2,000)"
    assert common.fmt_range(None) == "—"
    assert common.markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_parse_args_defaults_and_errors(tmp_path):
    args = run.parse_args([])
    assert args.shapes == ["small", "hh"] and args.sides == ["project", "tunix", "trl"]
    assert args.repeats == 3 and args.warmup == 1
    bad = [
        ["--shapes", "huge"],
        ["--sides", "tunix"],
        ["--sides", "project", "vllm"],
        ["--project-algos", "k2"],
        ["--repeats", "0"],
        ["--seed", "-1"],
        ["--json", str(tmp_path)],
    ]
    for argv in bad:
        with pytest.raises(UsageError):
            run.parse_args(argv)


def _args(**kw):
    base = dict(
        shapes=["small"],
        sides=["project", "tunix", "trl"],
        project_algos=["k1", "k3"],
        workloads=["sample", "prefill", "rl"],
    )
    return argparse.Namespace(**{**base, **kw})


def test_cells_plan_one_round():
    cells = run.cells(_args())
    keys = [run.cell_key(c) for c in cells]
    # sampling N=8 (3 sides) + prefill N=1,8,32 (3 x 3) + RL: project k1, k3; tunix grpo; trl rloo, grpo
    assert len(keys) == 3 + 9 + 5 == len(set(keys))
    assert keys[:3] == ["small/sample/N=8/project", "small/sample/N=8/tunix", "small/sample/N=8/trl"]
    assert "small/prefill/N=32/trl" in keys and "small/rl/grpo/tunix" in keys and "small/rl/rloo/trl" in keys
    prefill = [c for c in cells if c["kind"] == "prefill"]
    assert {c["max_new_tokens"] for c in prefill} == {1}
    hh = run.cells(_args(shapes=["hh"], workloads=["sample"], sides=["project"]))
    assert [c["n"] for c in hh] == [8, 16]


def _answers(walls, **extra):
    return [{"wall": w, "cpu": w / 2, **{k: v * w for k, v in extra.items()}} for w in walls]


def test_aggregate_report_and_table():
    args = _args()
    records = {
        "small/sample/N=8/project": _answers([10.0, 1.0, 2.0, 3.0]),
        "small/sample/N=8/tunix": _answers([20.0, 4.0, 4.0, 4.0]),
        "small/sample/N=8/trl": [{"error": "boom"}],
        "small/prefill/N=1/project": _answers([5.0, 0.02, 0.03, 0.04]),
        "small/prefill/N=1/tunix": _answers([5.0, 0.06, 0.06, 0.06]),
        "small/rl/k3/project": [
            {**a, "shared_prompt": True} for a in _answers([60.0, 4.0, 5.0, 6.0], update=0.5)
        ],
        "small/rl/grpo/tunix": _answers([90.0, 10.0, 10.0, 10.0], update_with_ref=0.8),
    }
    cells = run.aggregate(records, warmup=1)
    assert cells["small/sample/N=8/project"]["first_wall"] == 10.0
    assert cells["small/sample/N=8/project"]["wall"] == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert (
        cells["small/sample/N=8/trl"]["errors"] == ["boom"]
        and cells["small/sample/N=8/trl"]["wall"]["n"] == 0
    )
    assert cells["small/rl/k3/project"]["shared_prompt"] is True
    assert cells["small/rl/k3/project"]["update"]["median"] == 2.5

    matmul = {"flops_per_s": {"median": 1e11, "min": 5e10, "max": 2e11}}
    rep = run.report(cells, matmul, args, shared_default=True)
    # sampling: 8 x 8 x 64 = 4096 tokens; project 4096/2 tok/s vs tunix 4096/4 -> 2x (range 4/3 .. 4)
    r = rep["ratios"]["small/sample/N=8/project÷tunix"]["wall"]
    assert r == {"median": 2.0, "min": pytest.approx(4 / 3), "max": 4.0}
    assert "small/sample/N=8/project÷trl" not in rep["ratios"]
    assert rep["ratios"]["small/prefill/N=1/project÷tunix"]["wall"]["median"] == pytest.approx(2.0)
    rl = rep["ratios"]["small/rl/k3÷tunix/grpo"]
    assert rl["wall"]["median"] == 2.0 and rl["update"]["median"] == pytest.approx(8.0 / 2.5)
    limit = rep["update_vs_limit"]["small/k3"]
    assert limit["tokens"] == 4352
    flops = 8 * (4_721_920 * 4352 + 2_097_152 * 4096)
    assert limit["flops"] == flops and limit["achieved_flops_per_s"] == pytest.approx(flops / 2.5)
    assert limit["fraction_of_matmul"] == pytest.approx(limit["achieved_flops_per_s"] / 1e11)

    table = run.markdown(rep, args)
    lines = table.splitlines()
    assert lines[0].startswith("| shape | workload | project | tunix 0.1.7 |")
    row = next(line for line in lines if "sampling N=8, tokens/s (wall)" in line)
    assert "| 2,048 (1,365–4,096) | 1,024 (1,024–1,024) | — | 2.00 (1.33–4.00) | — |" in row
    step = next(line for line in lines if "RL step, s — project k3 (shared prompt)" in line)
    assert "5.00 (4.00–6.00)" in step and "10.00 (10.00–10.00) (grpo)" in step


def test_throughput_inverts_the_range():
    assert run.throughput({"median": 2.0, "min": 1.0, "max": 4.0}, 8) == {
        "median": 4.0,
        "min": 2.0,
        "max": 8.0,
    }
    assert run.throughput(common.summarize([]), 8) is None


def test_rerender_rebuilds_the_report_from_saved_raw_answers(tmp_path, capsys):
    raw = {
        "small/sample/N=8/project": _answers([10.0, 1.0, 2.0, 3.0]),
        "small/sample/N=8/tunix": _answers([20.0, 4.0, 4.0, 4.0]),
    }
    saved = {
        "shapes": {"small": {}},
        "warmup": 1,
        "repeats": 3,
        "versions": {"project": {}, "tunix": {}},
        "raw": raw,
        "matmul": {"n": 2048, "flops_per_s": {"median": 1e11, "min": 1e11, "max": 1e11}},
        "shared_prompt_default": True,
        "started": "then",
    }
    src, out, md = tmp_path / "saved.json", tmp_path / "out.json", tmp_path / "table.md"
    src.write_text(json.dumps(saved))
    assert run.main(["--rerender", str(src), "--json", str(out), "--markdown", str(md)]) == 0
    rep = json.loads(out.read_text())
    assert rep["rerendered"] is True and rep["started"] == "then"
    assert rep["ratios"]["small/sample/N=8/project÷tunix"]["wall"]["median"] == 2.0
    assert "| 2,048 (1,365–4,096) | 1,024 (1,024–1,024) | 2.00 (1.33–4.00) |" in md.read_text()
    with pytest.raises(UsageError, match="not a run.py --json report"):
        src.write_text("{}")
        run.main(["--rerender", str(src)])


def test_missing_peer_venv_is_one_usage_error_before_any_work(tmp_path):
    with pytest.raises(UsageError, match="run `bash benchmarks/peers/setup.sh` first"):
        run.main(["--tunix-python", str(tmp_path / "no" / "python")])
