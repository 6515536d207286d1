"""launch/tpu_pod.sh argument handling, with a stub gcloud on PATH that records what it would run."""

import os
import shutil
import subprocess

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
