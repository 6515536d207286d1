"""Kill-and-resume (issue 18), the CI-sized version of ``scripts/kill_resume.py``: an 8-step bandit run
SIGKILLed at 3 seeded moments — two at random times, one while Orbax writes a checkpoint — and rerun; each
rerun's final_eval.json (outside timings) and metrics.jsonl equal the uninterrupted run's. The 20-moment run
and its output are in docs/reliability.md."""

import json
import subprocess
import sys


def test_three_kills_resume_identically(repo_root, tmp_path):
    report = tmp_path / "report.json"
    cmd = [sys.executable, str(repo_root / "scripts" / "kill_resume.py"), "--n", "3", "--num-steps", "8"]
    cmd += ["--seed", "1", "--workroot", str(tmp_path / "work"), "--json", str(report)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=repo_root)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.splitlines()[-1] == "3/3 resumed identically"
    moments = json.loads(report.read_text())["moments"]
    assert [m["outcome"] for m in moments] == ["killed"] * 3
    assert moments[2]["plan"].startswith("during a checkpoint save") and moments[2]["orbax_tmp_dir_present"]
    assert all(m["final_eval_equal"] and m["metrics_equal"] and m["rerun_exit"] == 0 for m in moments)
