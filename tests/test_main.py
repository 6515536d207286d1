"""The README's main job (python -m infalign_jax.main): outputs, matched KL, and bad input."""

import json

import pytest
from cli_signals import rows, signal_when

from infalign_jax.cli import UsageError, run_main
from infalign_jax.main import _method_settings, format_summary, main, run


def test_main_job_short_run(tmp_path):
    """A short run writes summary/plot; the analytic β's put every method's *prediction* on the budget."""
    summary = run("bon:4", 0.3, tmp_path, seed=0, steps=30)
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    assert (tmp_path / "phi_star.npz").exists()
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert set(on_disk["ctrl"]) == {"identity", "exponential", "optimal"}
    for r in on_disk["ctrl"].values():
        assert r["predicted_kl"] == pytest.approx(0.3, abs=2e-3)
        assert 0.5 < r["win_rate"] < 1.0
    # theory: at equal KL the BoN-aware transforms predict a higher BoN win rate than the identity
    pred = {m: r["predicted_win_rate"] for m, r in on_disk["ctrl"].items()}
    assert pred["optimal"] >= pred["exponential"] > pred["identity"] + 0.05
    assert "calibrate-and-transform" in format_summary(summary)
    # The same workdir with other settings is refused before anything is written; the same settings resume.
    before = {f: (tmp_path / f).read_bytes() for f in ("summary.json", "phi_star.npz", "settings.json")}
    with pytest.raises(UsageError, match=r"other settings \(kl_budget: 0.3 -> 0.5\)"):
        run("bon:4", 0.5, tmp_path, seed=0, steps=30)
    assert {f: (tmp_path / f).read_bytes() for f in before} == before
    again = run("bon:4", 0.3, tmp_path, seed=0, steps=30)
    assert {m: r["win_rate"] for m, r in again["ctrl"].items()} == {
        m: r["win_rate"] for m, r in summary["ctrl"].items()
    }


def test_missing_bandit_config_is_reported_before_writing(tmp_path, monkeypatch):
    """configs/ is not in a wheel: without a checkout the main job says so before touching the workdir."""
    import infalign_jax.main as main_module

    monkeypatch.setattr(main_module, "BANDIT_CONFIG", tmp_path / "configs" / "ctrl_bandit.py")
    with pytest.raises(UsageError, match="pip install -e"):
        run("bon:4", 0.3, tmp_path / "w", seed=0, steps=1)
    assert not (tmp_path / "w").exists()


def test_bad_seed_is_refused_before_the_workdir_is_claimed(tmp_path):
    """A seed outside [0, 2**32) used to be found by the trainer, after settings.json had claimed the workdir
    for that seed, so the corrected rerun was refused as "a run with other settings"."""
    with pytest.raises(UsageError, match="--seed must be an integer in"):
        run("bon:4", 0.3, tmp_path / "w", seed=-1, steps=1)
    assert not (tmp_path / "w").exists()


def test_workdir_spelled_relative_resumes_and_a_damaged_record_is_one_error(tmp_path, monkeypatch):
    """The optimal run's transform names workdir/phi_star.npz: with the workdir kept as typed, `--workdir r`
    after `--workdir /abs/r` was refused as a run with other settings (a 'table:' path)."""
    first = run("bon:4", 0.3, tmp_path / "r", seed=0, steps=2)
    monkeypatch.chdir(tmp_path)
    again = run("bon:4", 0.3, "r", seed=0, steps=2)
    assert again["ctrl"] == first["ctrl"]
    for damaged in ("{not json", "[1, 2]"):
        (tmp_path / "r" / "settings.json").write_text(damaged)
        with pytest.raises(UsageError, match="cannot read .*settings.json"):
            run("bon:4", 0.3, "r", seed=0, steps=2)


def test_moved_or_copied_workdir_resumes_with_relative_paths(tmp_path):
    """summary.json held the absolute path of phi_star.npz, and the optimal CTRL run recorded it in its
    transform ('table:/abs/workdir/phi_star.npz'), so a moved or copied workdir was refused on resume as a run
    with other settings. Now both name 'table:phi_star.npz', relative to the workdir."""
    import os
    import shutil

    first = run("bon:4", 0.3, tmp_path / "a", seed=0, steps=2)
    assert first["ctrl"]["optimal"]["transform"] == "table:phi_star.npz"
    assert str(tmp_path) not in (tmp_path / "a" / "summary.json").read_text()
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    (tmp_path / "a").rename(tmp_path / "moved")
    cwd = os.getcwd()
    for name in ("moved", "copy"):
        work = tmp_path / name
        files = [p for m in ("identity", "exponential", "optimal") for p in (work / m).rglob("*")]
        kept = {p: p.read_bytes() for p in files if p.is_file() and "checkpoints" in p.parts}
        kept.update({p: p.read_bytes() for p in files if p.name == "final_eval.json"})
        assert run("bon:4", 0.3, work, seed=0, steps=2) == first  # resumed, not refused
        assert {p: p.read_bytes() for p in kept} == kept  # nothing retrained
    assert os.getcwd() == cwd


def test_identity_procedure_uses_the_identity_transform(tmp_path):
    """For T = identity the best exponential has t ≈ 0: the exponential method trains Φ(u) = u (exp:0 is not
    a valid transform)."""
    point = {name: {"t": 2e-5, "beta": 0.3} for name in ("identity", "exponential", "optimal")}
    settings = _method_settings({"points": [point]}, tmp_path / "phi.npz")
    assert settings["exponential"] == ("identity", 0.3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--procedure", "bon:7"], "bandit evaluates"),
        (["--kl", "-1"], "--kl"),
        (["--procedure", "nope"], "procedure"),
        (["--workdir", "{file}"], "exists and is not a directory"),
    ],
)
def test_main_job_bad_input_exits_2(tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("keep me")
    args = [a.format(file=tmp_path / "file") for a in args]
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, ["--workdir", str(tmp_path / "w"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "w" / "summary.json").exists()
    assert (tmp_path / "file").read_text() == "keep me"


def test_other_steps_are_refused_and_sigterm_exits_143(tmp_path):
    """--steps is a setting: the bandit config's cosine learning rate is spread over the run, so a run
    extended from 3 to 6 steps reported a 6-step run's numbers it does not have (0.5775 vs 0.5959 win rate,
    review of 2026-11-27). SIGTERM saved a checkpoint but died with a Preempted traceback (exit 1)."""
    import sys

    first = run("bon:4", 0.3, tmp_path / "w", seed=0, steps=2)
    before = {p: p.read_bytes() for p in (tmp_path / "w").rglob("*") if p.is_file()}
    with pytest.raises(UsageError, match=r"other settings \(steps: 2 -> 3\)"):
        run("bon:4", 0.3, tmp_path / "w", seed=0, steps=3)
    assert {p: p.read_bytes() for p in (tmp_path / "w").rglob("*") if p.is_file()} == before
    assert run("bon:4", 0.3, tmp_path / "w", seed=0, steps=2)["ctrl"] == first["ctrl"]
    # An interrupted workdir recorded before --steps was a setting (no "steps", no summary.json) resumes;
    # each CTRL run's own resume check decides about its length.
    record = tmp_path / "w" / "settings.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "steps"}))
    (tmp_path / "w" / "summary.json").unlink()
    assert run("bon:4", 0.3, tmp_path / "w", seed=0, steps=2)["ctrl"] == first["ctrl"]
    (tmp_path / "w" / "summary.json").unlink()  # (the rerun wrote it again: it would supply the steps)
    with pytest.raises(UsageError, match="with optim.schedule 'cosine'"):
        run("bon:4", 0.3, tmp_path / "w", seed=0, steps=3)

    work = tmp_path / "term"
    cmd = [sys.executable, "-m", "infalign_jax.main", "--workdir", str(work), "--steps", "100000"]
    code, err = signal_when(cmd, lambda: rows(work / "identity" / "metrics.jsonl") >= 3)
    assert code == 143, err[-3000:]
    assert "SIGTERM: saved checkpoint at step" in err and "Traceback" not in err
    assert any(p.name.isdigit() for p in (work / "identity" / "checkpoints").iterdir())


def test_cli_prints_the_table_and_a_rerun_says_already_complete(tmp_path, capsys):
    """The CLI ends with the per-method table and where the outputs are; rerun with the same settings it says
    ``already complete:`` on its first line and trains or writes nothing (other settings: still refused)."""
    work = tmp_path / "w"
    argv = ["--workdir", str(work), "--steps", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    summary = json.loads((work / "summary.json").read_text())
    table = format_summary(summary).splitlines()
    assert out[-len(table) - 1 : -1] == [table[0]] + [f"  {line}" for line in table[1:]]
    assert out[-1] == (
        f"  outputs: {work} (summary.json, frontier.png, phi_star.npz, identity/, exponential/, optimal/)"
    )
    files = lambda: {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in work.rglob("*") if p.is_file()}
    written = files()
    assert main(argv) == 0
    again = capsys.readouterr().out.splitlines()
    assert again[0] == f"already complete: {table[0]}; outputs in {out[-1].split(': ', 1)[1]}"
    assert again[1:] == out[-len(table) : -1]
    assert files() == written
    with pytest.raises(UsageError, match=r"other settings \(steps: 2 -> 3\)"):
        main(["--workdir", str(work), "--steps", "3"])
