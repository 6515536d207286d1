"""The HH-harmless experiment driver (infalign_jax/experiments): the matched-KL math on hand-made numbers, and
the toy scale through every stage (data, SFT, both reward models, table, 8 CTRL runs, evaluation, results):
summary.json's schema, and a rerun that finds every stage already complete."""

import json

import numpy as np
import pytest

from infalign_jax.cli import UsageError
from infalign_jax.evaluate.report import bootstrap_indices, mean_ci
from infalign_jax.experiments import matched_kl as mk


# --------------------------------------------------------------------------------- matched-KL math
def test_interpolation_weights_by_hand():
    kl_k = np.array([0.4, 0.1, 0.2])  # unsorted on purpose
    np.testing.assert_array_equal(mk.interpolation_weights(kl_k, 0.1), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(mk.interpolation_weights(kl_k, 0.4), [1.0, 0.0, 0.0])
    # 0.25 is a quarter of the way from 0.2 to 0.4.
    np.testing.assert_allclose(mk.interpolation_weights(kl_k, 0.25), [0.25, 0.0, 0.75], rtol=0, atol=1e-15)
    np.testing.assert_allclose(mk.interpolation_weights(kl_k, 0.15), [0.0, 0.5, 0.5], rtol=0, atol=1e-15)
    for outside in (0.05, 0.41):
        with pytest.raises(ValueError, match="outside"):
            mk.interpolation_weights(kl_k, outside)


def test_interpolate_per_prompt_by_hand():
    kl_k = np.array([0.1, 0.3])
    win_kp = np.array([[0.5, 0.7, 0.2], [0.9, 0.3, 0.6]])
    # At KL 0.15: 3/4 of the first point + 1/4 of the second.
    np.testing.assert_allclose(
        mk.interpolate_per_prompt(kl_k, win_kp, 0.15), [0.6, 0.6, 0.3], rtol=0, atol=1e-15
    )


def test_overlap_and_matched_kls():
    a, b = np.array([0.02, 0.3, 0.12]), np.array([0.1, 0.6])
    assert mk.overlap(a, b) == (0.1, 0.3)
    assert mk.matched_kls(a, b, (0.05, 0.1, 0.2, 0.3, 0.5)) == [0.1, 0.2, 0.3]
    assert mk.matched_kls(a, b, (0.5,)) == [pytest.approx(0.2)]  # no target inside: the overlap's midpoint
    assert mk.overlap(np.array([0.0, 0.1]), np.array([0.2, 0.3])) is None
    assert mk.matched_kls(np.array([0.0, 0.1]), np.array([0.2, 0.3]), (0.1, 0.2)) == []


def test_compare_at_kl_by_hand():
    """Method a: points at KL 0.1, 0.3; method b: at KL 0.0, 0.4; compared at KL 0.2 on 4 prompts."""
    kl_a, win_a = np.array([0.1, 0.3]), np.array([[0.4, 0.6, 0.5, 0.7], [0.6, 0.8, 0.7, 0.9]])
    kl_b, win_b = np.array([0.0, 0.4]), np.array([[0.5, 0.5, 0.5, 0.5], [0.7, 0.3, 0.5, 0.9]])
    # a at 0.2: midpoint -> [0.5, 0.7, 0.6, 0.8]; b at 0.2: midpoint -> [0.6, 0.4, 0.5, 0.7].
    d_p = np.array([-0.1, 0.3, 0.1, 0.1])
    idx_bp = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 2, 3], [2, 3, 2, 3]] * 10)
    diff, ci = mk.compare_at_kl(kl_a, win_a, kl_b, win_b, 0.2, idx_bp)
    assert diff == pytest.approx(0.1, abs=1e-15)
    # Resample means: -0.1, 0.3, 0.1, 0.1 (each 10 times); percentiles 2.5 / 97.5 -> -0.1 / 0.3.
    assert ci == [pytest.approx(-0.1, abs=1e-12), pytest.approx(0.3, abs=1e-12)]
    means_b = d_p[idx_bp].mean(axis=1)
    assert ci == [pytest.approx(np.percentile(means_b, 2.5)), pytest.approx(np.percentile(means_b, 97.5))]


def test_compare_on_a_point_is_the_paired_difference():
    """At a KL where both methods have a β point, the comparison is the plain paired difference of those
    two policies (the evaluator's paired_differences on the same resamples)."""
    rng = np.random.default_rng(0)
    win_a, win_b = rng.uniform(size=(3, 20)), rng.uniform(size=(2, 20))
    kl_a, kl_b = np.array([0.05, 0.2, 0.5]), np.array([0.2, 0.6])
    idx_bp = bootstrap_indices(20, 500, 3)
    diff, ci = mk.compare_at_kl(kl_a, win_a, kl_b, win_b, 0.2, idx_bp)
    want = mean_ci(win_a[1] - win_b[0], idx_bp)
    assert diff == want[0] and ci == want[1]


# ------------------------------------------------------------------------- summary from a made-up report
def _fake_report(kls: dict, wins: dict, num_prompts=3):
    """An eval.json-shaped report: one judge, one procedure; policy m_bi with KL kls[m][i] and the win rate
    wins[m][i] on every prompt."""
    report = {
        "procedures": ["won:4"],
        "judges": [{"name": "j", "pairwise_accuracy": 0.6, "ci95": [0.5, 0.7], "n_eval": 10}],
        "prompt_ids": list(range(num_prompts)),
        "samples": 8,
        "bootstrap": {"resamples": 50, "seed": 0},
        "kl": {},
        "win_rates": [],
        "per_prompt_win_rates": {},
    }
    for m in kls:
        for i, (kl, w) in enumerate(zip(kls[m], wins[m], strict=True)):
            pol = f"{m}_b{i}"
            report["kl"][pol] = {"mean": kl, "se": 0.01}
            report["per_prompt_win_rates"][pol] = {"j": {"won:4": [w] * num_prompts}}
            report["win_rates"].append(
                {"policy": pol, "judge": "j", "procedure": "won:4", "win_rate": w, "ci95": [w, w]}
            )
    return report


def test_build_summary_by_hand():
    from infalign_jax.experiments.results import build_summary, markdown

    kls = {"raw": [0.1, 0.3], "identity": [0.1, 0.3], "ctrl_won": [0.0, 0.2], "ctrl_bon": [0.4, 0.5]}
    wins = {"raw": [0.5, 0.7], "identity": [0.6, 0.6], "ctrl_won": [0.5, 0.9], "ctrl_bon": [0.3, 0.4]}
    plan = {"methods": {m: {"transform": m, "procedure": "won:4", "betas": [1.0, 0.5]} for m in kls}}
    settings = {"experiment": "hh_harmless", "scale": "toy", "seed": 0}
    s = build_summary(_fake_report(kls, wins), plan, settings, (0.1, 0.2, 0.3), {"data": 1.0, "results": 2.0})
    got = {(c["method"], c["baseline"], round(c["kl"], 12)): c for c in s["comparisons"]}
    # raw at 0.1 / 0.2 / 0.3: 0.5 / 0.6 / 0.7; identity 0.6 everywhere; ctrl_won at 0.1 / 0.2: 0.7 / 0.9.
    want = {
        ("identity", "raw", 0.1): 0.1,
        ("identity", "raw", 0.2): 0.0,
        ("identity", "raw", 0.3): -0.1,
        ("ctrl_won", "raw", 0.1): 0.2,
        ("ctrl_won", "raw", 0.2): 0.3,
        ("ctrl_won", "identity", 0.1): 0.1,
        ("ctrl_won", "identity", 0.2): 0.3,
    }
    assert set(got) == set(want)
    for key, diff in want.items():
        c = got[key]
        assert c["procedure"] == "won:4" and c["judge"] == "j"
        assert c["diff"] == pytest.approx(diff, abs=1e-12)
        assert c["ci95"] == [pytest.approx(diff, abs=1e-12)] * 2  # every prompt has the same difference
    assert s["not_compared"] == [
        {"method": "ctrl_bon", "baseline": b, "why": "KL ranges do not overlap"} for b in ("raw", "identity")
    ]
    assert s["stage_seconds"] == {"data": 1.0}
    assert [p["kl"] for p in s["methods"]["ctrl_won"]["points"]] == [0.0, 0.2]
    text = markdown(s)
    assert "| won:4 | j | 0.200 | ctrl_won − raw | +0.300 [+0.300, +0.300] |" in text


# ---------------------------------------------------------------------- the toy scale, every stage
STAGES = (
    ["data", "sft", "rm_policy", "rm_minilm", "table", "plan"]
    + [f"ctrl/{m}_b{i}" for m in ("raw", "identity", "ctrl_won", "ctrl_bon") for i in (0, 1)]
    + ["eval", "results", "diagnose"]
)
COMPARISON_KEYS = {"procedure", "judge", "kl", "method", "baseline", "diff", "ci95"}


def _run(argv):
    from infalign_jax.cli import run_main
    from infalign_jax.experiments import hh_harmless

    with pytest.raises(SystemExit) as e:
        run_main(hh_harmless.main, argv)
    return e.value.code


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("experiment_hh") / "w"
    assert _run(["--workdir", str(workdir), "--scale", "toy", "--seed", "0"]) == 0
    return workdir


def test_toy_summary_schema(toy):
    s = json.loads((toy / "results" / "summary.json").read_text())
    report = json.loads((toy / "eval" / "eval.json").read_text())
    assert s["settings"] == {"experiment": "hh_harmless", "scale": "toy", "seed": 0}
    assert s["procedures"] == ["won:4", "won:2", "won:8", "bon:4", "standard"]
    assert s["primary_procedure"] == "won:4"
    assert [j["name"] for j in s["judges"]] == ["train_rm", "minilm"]
    for j in s["judges"]:  # held-out accuracies copied from the judges' train_rm eval.json
        rec = json.loads(
            (toy / ("rm_policy" if j["name"] == "train_rm" else "rm_minilm") / "eval.json").read_text()
        )
        assert j["pairwise_accuracy"] == rec["pairwise_accuracy"] and j["ci95"] == rec["ci95"]
    assert list(s["methods"]) == ["raw", "identity", "ctrl_won", "ctrl_bon"]
    assert s["methods"]["ctrl_won"]["transform"].startswith("exp:-")  # t < 0 for worst-of-N
    assert float(s["methods"]["ctrl_bon"]["transform"][4:]) > 0
    assert s["methods"]["raw"]["transform"] == "raw" and s["methods"]["identity"]["transform"] == "identity"
    wins = {(w["policy"], w["judge"], w["procedure"]): w for w in report["win_rates"]}
    for m, spec in s["methods"].items():
        assert len(spec["points"]) == 2
        for i, pt in enumerate(spec["points"]):
            assert pt["policy"] == f"{m}_b{i}" and pt["kl"] == report["kl"][pt["policy"]]["mean"]
            for j in ("train_rm", "minilm"):
                for p in s["procedures"]:
                    w = wins[(pt["policy"], j, p)]
                    assert pt["win_rates"][j][p] == {"win_rate": w["win_rate"], "ci95": w["ci95"]}
    assert isinstance(s["comparisons"], list)
    for c in s["comparisons"]:
        assert set(c) == COMPARISON_KEYS
        assert c["method"] in s["methods"] and c["baseline"] in s["methods"] and c["method"] != c["baseline"]
        assert c["procedure"] in s["procedures"] and c["judge"] in ("train_rm", "minilm")
        assert c["ci95"][0] <= c["ci95"][1]
    compared = {(c["method"], c["baseline"]) for c in s["comparisons"]}
    skipped = {(n["method"], n["baseline"]) for n in s["not_compared"]}
    assert compared | skipped == {
        ("identity", "raw"), ("ctrl_won", "raw"), ("ctrl_won", "identity"), ("ctrl_bon", "raw"),
        ("ctrl_bon", "identity"),
    } and not compared & skipped  # fmt: skip
    assert list(s["stage_seconds"]) == STAGES[:-2] and all(v > 0 for v in s["stage_seconds"].values())
    assert (toy / "results" / "frontier.png").stat().st_size > 0
    assert "not a result" in (toy / "results" / "results.md").read_text()


def test_toy_diagnostics(toy):
    """diagnostics.json: every policy measured and (calibrated methods) set against the theory of its tilt;
    the measured standard win rate equals the mean calibrated reward recomputed from the evaluation cache."""
    from infalign_jax.evaluate.command import cached_arrays
    from infalign_jax.experiments.diagnostics import calibrated

    d = json.loads((toy / "results" / "diagnostics.json").read_text())
    report = json.loads((toy / "eval" / "eval.json").read_text())
    names = [p["name"] for p in report["policies"]]
    assert [r["policy"] for r in d["policies"]] == names and set(d["training"]) == set(names)
    num_chunks = len(list((toy / "eval" / "cache" / "reference").glob("chunk-*.npz")))
    rewards, _ = cached_arrays(toy / "eval", ["reference", *names], ["train_rm", "minilm"], num_chunks)
    for r in d["policies"]:
        for j in ("train_rm", "minilm"):
            u = calibrated(rewards[r["policy"]][j], rewards["reference"][j])
            assert r["measured"][j]["standard"] == pytest.approx(u.mean(), abs=1e-12)
            assert 0.0 <= r["measured"][j]["tail"] <= 1.0
        assert ("theory_at_kl" in r) == (r["method"] != "raw")
        if r["method"] != "raw":
            assert 0.0 < r["theory_at_kl"]["won:4"] < 1.0 and 0.0 <= r["theory_at_kl"]["tail"] <= 1.0
    assert {(p["method"], p["baseline"]) for p in d["power"]} <= {
        ("ctrl_won", "identity"),
        ("ctrl_won", "raw"),
    }
    for p in d["power"]:
        half = 1.959963984540054 * p["sd_per_prompt"] / np.sqrt(d["eval_prompts"])
        assert p["ci95_half_width_now"] == pytest.approx(half, rel=1e-12)
    assert "## The estimator" in (toy / "results" / "diagnostics.md").read_text()


def test_toy_plan_betas(toy):
    """β rule: raw's β = identity's β × std(raw)/std(u), std(raw) pooled within-prompt from the table."""
    from infalign_jax.ctrl.table import load_table

    plan = json.loads((toy / "plan.json").read_text())
    r = load_table(toy / "table").rewards_nk.astype(np.float64)
    std_raw = np.sqrt(r.var(axis=1, ddof=1).mean())
    assert plan["std_raw_within_prompt"] == pytest.approx(std_raw, rel=1e-12)
    raw, ident = plan["methods"]["raw"]["betas"], plan["methods"]["identity"]["betas"]
    np.testing.assert_allclose(np.array(raw) / np.array(ident), std_raw * np.sqrt(12.0), rtol=2e-6)
    for m in plan["methods"].values():  # larger KL target -> smaller β
        assert m["betas"][0] > m["betas"][1] > 0
    assert plan["t_won4"] < 0 < plan["t_bon4"]


def test_toy_rerun_skips_every_stage(toy, capsys):
    summary = (toy / "results" / "summary.json").read_bytes()
    record = json.loads((toy / "stages.json").read_text())
    capsys.readouterr()
    assert _run(["--workdir", str(toy), "--scale", "toy", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert f"== stage {stage}: already complete" in out, stage
    assert (toy / "results" / "summary.json").read_bytes() == summary
    after = json.loads((toy / "stages.json").read_text())
    assert {k: v["seconds"] for k, v in after.items()} == {k: v["seconds"] for k, v in record.items()}


def test_refusals(toy, tmp_path, capsys):
    listing = sorted(p.name for p in toy.iterdir())
    assert _run(["--workdir", str(toy), "--scale", "toy", "--seed", "1"]) == 2
    assert "error:" in capsys.readouterr().err and sorted(p.name for p in toy.iterdir()) == listing
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("keep")
    assert _run(["--workdir", str(tmp_path / "other"), "--scale", "toy"]) == 2
    assert "holds no experiment.json" in capsys.readouterr().err
    assert (tmp_path / "other" / "x.txt").read_text() == "keep"
    with pytest.raises(UsageError, match="unknown scale"):
        from infalign_jax.experiments.hh_harmless import run_experiment

        run_experiment(tmp_path / "new", "huge")


def test_results_of_another_experiment_refused(toy, tmp_path, capsys):
    other = tmp_path / "results"
    other.mkdir()
    record = json.dumps({"settings": {"experiment": "hh_harmless", "scale": "full", "seed": 7}})
    (other / "summary.json").write_text(record)
    assert _run(["--workdir", str(toy), "--scale", "toy", "--results", str(other)]) == 2
    assert "use another --results" in capsys.readouterr().err
    assert (other / "summary.json").read_text() == record and sorted(p.name for p in other.iterdir()) == [
        "summary.json"
    ]
