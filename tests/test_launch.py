"""The launchers: launch/tpu_pod.sh argument handling, with a stub gcloud on PATH that records what it
would run; launch/local.sh setup's messages; launch/gpu.sh and launch/slurm.sh dry runs against real runs
(stubs)."""

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest


@pytest.fixture
def stub_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {tmp_path / "gcloud.log"}\n')
    gcloud.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, tmp_path / "gcloud.log"


def _launch(repo_root, env, *args, cwd=None):
    script = repo_root / "launch" / "tpu_pod.sh"
    return subprocess.run(
        ["bash", str(script), *args],
        cwd=cwd or repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="the launcher ships git-tracked files")
def test_config_is_passed_as_its_path_inside_the_checkout(repo_root, stub_env, tmp_path):
    """The workers run from the unpacked checkout: an absolute --config (or one relative to another
    directory) used to be passed on unchanged, naming a file that does not exist there (or was refused)."""
    if subprocess.run(
        ["git", "ls-files", "--error-unmatch", "configs/ctrl_hh_harmless.py"],
        cwd=repo_root,
        capture_output=True,
    ).returncode:
        pytest.skip("not a git checkout")
    env, log = stub_env
    for config, cwd in (
        (str(repo_root / "configs" / "ctrl_hh_harmless.py"), tmp_path),
        ("../configs/ctrl_hh_harmless.py", repo_root / "launch"),
    ):
        log.unlink(missing_ok=True)
        res = _launch(
            repo_root, env, "--tpu", "t", "--zone", "z", "--config", config, "--workdir", "/mnt/w", cwd=cwd
        )
        assert res.returncode == 0, res.stderr
        calls = log.read_text()  # the ssh call's --command spans several lines
        assert calls.count(" ssh t --worker=all") == 1, calls
        assert "--config configs/ctrl_hh_harmless.py " in calls and "--workdir /mnt/w" in calls, calls
        assert "--config.mesh.data=0" in calls, calls  # the shipped configs' data=1 would leave hosts out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tpu"], "error: --tpu needs a value"),
        (
            ["--tpu", "t", "--zone", "z", "--config", "/etc/hostname", "--workdir", "/w"],
            "outside this checkout",
        ),
        (["--tpu", "t", "--zone", "z", "--config", "nope.py", "--workdir", "/w"], "does not exist"),
        (["--bogus"], "unknown argument --bogus"),
    ],
)
def test_bad_arguments_are_one_error_line_and_exit_2(repo_root, stub_env, args, message):
    env, log = stub_env
    res = _launch(repo_root, env, *args)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [res.stderr.strip()], res.stderr
    assert message in res.stderr and not log.exists()  # nothing was run


# ---------------------------------------------------------------------------------------------------------
# launch/local.sh setup, launch/gpu.sh, launch/slurm.sh. No venv is built and nothing real is run: `python3`
# (which local.sh makes the venv with), the venv's python and `srun` are stubs that record their arguments and
# environment (JSON lines); `scontrol` names the allocation's nodes.

STUB = """#!{python}
import json, os, sys
from pathlib import Path
LOG = {log!r}
if sys.argv[1:3] == ["-m", "venv"]:  # python3 -m venv DIR: a venv whose python is this recorder
    bin_dir = Path(sys.argv[3]) / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(Path(__file__).read_text())
    (bin_dir / "python").chmod(0o755)
with open(LOG, "a") as f:
    call = {{"prog": Path(sys.argv[0]).name, "argv": sys.argv[1:], "env": dict(os.environ)}}
    f.write(json.dumps(call) + "\\n")
"""
SLURM_ENV = {
    "SLURM_JOB_ID": "123456",
    "SLURM_JOB_NODELIST": "node[001-002]",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_GPUS_ON_NODE": "4",
}
CONFIG = "configs/ctrl_bandit.py"


class Stubs:
    def __init__(self, tmp_path):
        self.log = tmp_path / "calls.jsonl"
        self.venv = tmp_path / "venv"
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for name in ("python3", "srun"):
            (bin_dir / name).write_text(STUB.format(python=sys.executable, log=str(self.log)))
            (bin_dir / name).chmod(0o755)
        (bin_dir / "scontrol").write_text(
            '#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "node001\\nnode002\\n"\n'
        )
        (bin_dir / "scontrol").chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_COORDINATOR"))}
        self.env = {
            **env,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PYTHON": str(bin_dir / "python3"),
            "INFALIGN_VENV": str(self.venv),
        }

    def calls(self):
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def run(self, repo_root, script, *args, env=None, cwd=None):
        return subprocess.run(
            ["bash", str(repo_root / "launch" / script), *args],
            cwd=cwd or repo_root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture
def stubs(tmp_path):
    return Stubs(tmp_path)


def _dry_run(res) -> dict:
    """The 'key: value' lines --dry-run prints."""
    assert res.returncode == 0, res.stderr
    return dict(line.split(": ", 1) for line in res.stdout.strip().splitlines())


def test_local_setup_says_what_it_does_only_when_it_installs(repo_root, stubs):
    res = stubs.run(repo_root, "local.sh", "setup")
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[0] == f"local.sh: creating the virtual environment {stubs.venv} ..."
    assert "local.sh: installing the pinned requirements (about a minute) ..." in lines
    assert lines[-1] == f"local.sh: done: {stubs.venv} is ready" and res.stdout == ""
    pips = [c["argv"] for c in stubs.calls() if c["prog"] == "python"]
    assert pips[1] == ["-m", "pip", "install", "-q", "-r", "requirements.txt", "-r", "requirements-test.txt"]
    assert pips[-1] == ["-m", "pip", "install", "-q", "--no-deps", "-e", "."] and len(pips) == 4

    n_calls = len(stubs.calls())
    res = stubs.run(repo_root, "local.sh", "setup")  # up to date: silent, installs nothing
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "") and len(stubs.calls()) == n_calls

    (stubs.venv / ".infalign_stamp").write_text("an older install\n")
    res = stubs.run(repo_root, "local.sh", "setup")
    lines = res.stderr.strip().splitlines()
    assert lines[0] == "local.sh: requirements changed since the last install: reinstalling", lines
    assert lines[-1] == f"local.sh: done: {stubs.venv} is ready" and len(stubs.calls()) == n_calls + 4


def test_gpu_dry_run_prints_what_the_run_then_runs(repo_root, stubs):
    args = ["--config", CONFIG, "--workdir", "runs/g", "--", "--config.beta=0.2", "two words"]
    shown = _dry_run(stubs.run(repo_root, "gpu.sh", "--dry-run", *args))
    python = f"{stubs.venv}/bin/python"
    assert shown["process"] == (
        f"{python} -m infalign_jax.train --config {CONFIG} --workdir runs/g --config.mesh.data=0 "
        "--config.beta=0.2 two\\ words"
    )
    assert shown["directory"] == str(repo_root)
    assert "JAX_PLATFORMS=cuda" in shown["environment"].split()
    assert shown["setup"].startswith(
        f"bash launch/local.sh setup && {python} -m pip install -q jax\\[cuda12\\]=="
    )
    assert stubs.calls() == [] and not stubs.venv.exists()  # a dry run runs nothing

    res = stubs.run(repo_root, "gpu.sh", *args)
    assert res.returncode == 0, res.stderr
    calls = stubs.calls()
    cuda = [c["argv"] for c in calls if "jax[cuda12]" in " ".join(c["argv"])]
    jax_pin = next(
        ln for ln in (repo_root / "requirements.txt").read_text().splitlines() if ln.startswith("jax==")
    )
    assert cuda == [["-m", "pip", "install", "-q", f"jax[cuda12]=={jax_pin[5:]}"]]
    assert "gpu.sh: installing jax[cuda12]" in res.stderr
    run = calls[-1]
    assert run["prog"] == "python" and [python, *run["argv"]] == shlex.split(shown["process"])
    for item in shlex.split(shown["environment"]):
        key, value = item.split("=", 1)
        assert run["env"][key] == value
    n_calls = len(calls)
    res = stubs.run(repo_root, "gpu.sh", *args)  # set up already: no install, the same run
    assert res.returncode == 0 and res.stderr == "" and len(stubs.calls()) == n_calls + 1


def test_slurm_dry_run_and_run(repo_root, stubs, monkeypatch):
    from jax._src.clusters import SlurmCluster

    args = ["--config", CONFIG, "--workdir", "/mnt/shared/w", "--", "--config.num_steps=5"]
    shown = _dry_run(stubs.run(repo_root, "slurm.sh", "--dry-run", *args, env=SLURM_ENV))
    # The coordinator is the one JAX's own SLURM detection would pick (first node, port from the job id).
    monkeypatch.setenv("SLURM_JOB_ID", SLURM_ENV["SLURM_JOB_ID"])
    monkeypatch.setenv("SLURM_STEP_NODELIST", SLURM_ENV["SLURM_JOB_NODELIST"])
    assert shown["coordinator"] == SlurmCluster.get_coordinator_address(None, None) == "node001:62016"
    env = dict(item.split("=", 1) for item in shlex.split(shown["environment"]))
    assert env["JAX_COORDINATOR_ADDRESS"] == "node001:62016" and env["JAX_PLATFORMS"] == "cuda"
    assert "JAX_LOCAL_DEVICE_IDS" not in env  # one process per GPU: JAX takes GPU SLURM_LOCALID
    srun = shlex.split(shown["srun"])
    assert srun[:4] == ["srun", "--nodes=2", "--ntasks=8", "--ntasks-per-node=4"]
    assert "--gpu-bind=none" in srun and f"--chdir={repo_root}" in srun
    python = f"{stubs.venv}/bin/python"
    assert shlex.split(shown["process"]) == [
        python, "-m", "infalign_jax.train", "--distributed", "--config", CONFIG, "--workdir", "/mnt/shared/w",
        "--config.mesh.data=0", "--config.num_steps=5",
    ]  # fmt: skip
    assert stubs.calls() == []

    res = stubs.run(repo_root, "slurm.sh", *args, env=SLURM_ENV)
    assert res.returncode == 0, res.stderr
    run = stubs.calls()[-1]
    assert run["prog"] == "srun" and ["srun", *run["argv"]] == srun + shlex.split(shown["process"])
    assert all(run["env"][k] == v for k, v in env.items())

    # One process per node: it must see all 4 GPUs (JAX's SLURM detection would give it GPU 0 only).
    shown = _dry_run(
        stubs.run(repo_root, "slurm.sh", "--dry-run", "--per", "node", "--port", "7000", *args, env=SLURM_ENV)
    )
    env = dict(item.split("=", 1) for item in shlex.split(shown["environment"]))
    assert env["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3" and shown["coordinator"] == "node001:7000"
    assert shlex.split(shown["srun"])[:4] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1"]


@pytest.mark.parametrize(
    "script, args, env, message",
    [
        ("gpu.sh", ["--config", CONFIG, "--cli", "bogus"], {}, "--cli must be one of: train sft train_rm"),
        ("gpu.sh", ["--config", CONFIG], {}, "--workdir is required for --cli train"),
        ("gpu.sh", ["--config", "nope.py", "--workdir", "w"], {}, "config file nope.py does not exist"),
        ("gpu.sh", ["--cuda", "11", "--config", CONFIG], {}, "--cuda must be one of: 12 13"),
        ("gpu.sh", ["--workdir"], {}, "error: --workdir needs a value"),
        ("slurm.sh", ["--config", CONFIG, "--workdir", "w"], {}, "not inside a SLURM allocation"),
        ("slurm.sh", ["--cli", "train_rm", "--config", CONFIG, "--workdir", "w"], SLURM_ENV, "launch/gpu.sh"),
        (
            "slurm.sh",
            ["--per", "core", "--config", CONFIG, "--workdir", "w"],
            SLURM_ENV,
            "--per must be one of",
        ),
        ("slurm.sh", ["--port", "70000", "--config", CONFIG, "--workdir", "w"], SLURM_ENV, "--port must be"),
        ("slurm.sh", ["--config", CONFIG], SLURM_ENV, "--workdir is required"),
        (
            "slurm.sh",
            ["--config", CONFIG, "--workdir", "w"],
            {**SLURM_ENV, "SLURM_GPUS_ON_NODE": "0"},
            "GPUs per node unknown or invalid ('0')",
        ),
        ("slurm.sh", ["--bogus"], SLURM_ENV, "unknown argument --bogus"),
    ],
)
def test_gpu_and_slurm_bad_arguments_are_one_error_line_and_exit_2(
    repo_root, stubs, script, args, env, message
):
    for dry in ([], ["--dry-run"]):
        res = stubs.run(repo_root, script, *dry, *args, env=env)
        assert res.returncode == 2 and res.stderr.strip().splitlines() == [res.stderr.strip()], res.stderr
        assert message in res.stderr and res.stdout == "" and stubs.calls() == []  # nothing was run


def test_slurm_under_sbatch_finds_the_checkout_from_the_submission_directory(repo_root, stubs, tmp_path):
    """sbatch runs a copy of the script from its spool directory, outside the checkout."""
    spool = tmp_path / "spool" / "job123456"
    spool.mkdir(parents=True)
    (spool / "slurm_script").write_text((repo_root / "launch" / "slurm.sh").read_text())
    args = ["--dry-run", "--config", CONFIG, "--workdir", "w"]

    def run(env):
        return subprocess.run(
            ["bash", str(spool / "slurm_script"), *args],
            cwd=repo_root,
            env={**stubs.env, **SLURM_ENV, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    shown = _dry_run(run({"SLURM_SUBMIT_DIR": str(repo_root)}))
    assert f"--chdir={repo_root}" in shlex.split(shown["srun"])
    res = run({})
    assert res.returncode == 2 and res.stderr.startswith("error: cannot find the checkout"), res.stderr
