"""The trainer CLI: config validation (exit 2), auto t, NaN stop without checkpoint, SIGKILL resume equality,
SIGTERM save."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from cli_signals import rows, signal_when, wait_for

from infalign_jax.cli import UsageError, load_config_file
from infalign_jax.harness.checkpoint import Checkpointer
from infalign_jax.train import NonFiniteError, step_config, train

TINY = {
    "num_steps": 400,
    "prompts_per_step": 8,
    "num_samples": 8,
    "num_ref": 8,
    "checkpoint_every": 20,
    "bandit.num_contexts": 8,
    "bandit.num_responses": 32,
    "progress": False,
    "optim.lr": 0.05,
}


def tiny_config(repo_root, **extra):
    cfg = load_config_file(repo_root / "configs" / "ctrl_bandit.py")
    for key, value in {**TINY, **extra}.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def cli(repo_root, workdir, **extra):
    args = [f"--config.{k}={v}" for k, v in {**TINY, **extra}.items()]
    return [
        sys.executable,
        "-m",
        "infalign_jax.train",
        "--config",
        str(repo_root / "configs" / "ctrl_bandit.py"),
        "--workdir",
        str(workdir),
        *args,
    ]


def final_logits(workdir, step):
    return np.asarray(Checkpointer(workdir, 0).restore_raw(step)["params"]["logits"])


@pytest.mark.parametrize(
    "override, message",
    [
        ({"beta": 0.0}, "beta must be > 0"),
        ({"beta": -1.0}, "beta must be > 0"),
        ({"num_samples": 1}, "num_samples"),
        ({"num_ref": 0}, "num_ref"),
        ({"transform": "expo:3"}, "unknown transform"),
        ({"transform": "exp:-3", "procedure": "bon:4"}, "best-of-N"),
        ({"transform": "exp:3", "procedure": "won:4"}, "worst-of-N"),
        ({"procedure": "bon:x"}, "procedure .bon:x."),
        ({"problem": "chess"}, "unknown problem"),
        ({"transform": "exp:-3", "procedure": " BoN:4"}, "best-of-N"),  # spec normalized like the solver's
        ({"calibration_method": "bogus"}, "calibration_method"),
        ({"seed": 2**32}, "seed must be an integer in"),
        ({"max_to_keep": 0}, "max_to_keep must be an integer >= 1, got 0"),  # kept no checkpoint
        ({"checkpoint_every": -1}, "checkpoint_every must be an integer >= 0"),  # 0: the final step only
        ({"optim.warmup_steps": -5}, "optim.warmup_steps must be an integer >= 0, got -5"),
        ({"mesh.fsdp": 0}, "mesh.fsdp must be an integer >= 1, got 0"),  # was a SIGABRT in put_global
        ({"mesh.data": -1}, "mesh.data must be an integer >= 0, got -1"),  # said "needs -1 devices"
    ],
)
def test_invalid_configs_fail_at_start(repo_root, override, message):
    with pytest.raises(UsageError, match=message):
        step_config(tiny_config(repo_root, **override))


def test_cli_invalid_config_exits_2_and_writes_nothing(repo_root, tmp_path):
    res = subprocess.run(
        cli(repo_root, tmp_path / "w", beta=0.0), capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2 and "error: beta must be > 0" in res.stderr
    assert not (tmp_path / "w").exists()


def test_resume_refuses_other_settings(repo_root, tmp_path):
    """A workdir's checkpoint records the config: resuming with other settings (here β) is refused before
    anything is written. A longer run (num_steps) resumes only under a constant learning rate: with the
    bandit config's cosine schedule, 2 steps continued to 4 gave params 0.09 away from a 4-step run's yet
    reported them as one (review of 2026-11-27)."""
    work = tmp_path / "w"
    train(tiny_config(repo_root, num_steps=2), work)
    metrics = (work / "metrics.jsonl").read_text()
    with pytest.raises(UsageError, match=r"other settings \(beta: 0.338 -> 0.5\)"):
        train(tiny_config(repo_root, num_steps=4, beta=0.5), work)
    with pytest.raises(UsageError, match="num_steps 2; with optim.schedule 'cosine' .* a 4-step run"):
        train(tiny_config(repo_root, num_steps=4), work)
    assert (work / "metrics.jsonl").read_text() == metrics and max(_ckpt_steps(work)) == 2

    constant = {"optim.schedule": "constant", "optim.warmup_steps": 1}
    train(tiny_config(repo_root, num_steps=4, **constant), tmp_path / "ref")
    work = tmp_path / "constant"
    train(tiny_config(repo_root, num_steps=2, **constant), work)
    train(tiny_config(repo_root, num_steps=4, **constant), work)
    assert max(_ckpt_steps(work)) == 4
    np.testing.assert_array_equal(final_logits(work, 4), final_logits(tmp_path / "ref", 4))
    # A SHORTER run on it used to report the 4-step policy as a 2-step one (final_eval.json "steps": 4).
    metrics = (work / "metrics.jsonl").read_text()
    with pytest.raises(UsageError, match="trained for 4 steps, more than num_steps 2"):
        train(tiny_config(repo_root, num_steps=2, **constant), work)
    assert (work / "metrics.jsonl").read_text() == metrics
    # Rerunning the finished run returns what it wrote, untouched: the rewrite used to drop its step times.
    written = (work / "final_eval.json").read_bytes()
    assert "time_ms" in json.loads(written)
    assert train(tiny_config(repo_root, num_steps=4, **constant), work) == json.loads(written)
    assert (work / "final_eval.json").read_bytes() == written


def test_workdir_under_a_file_and_bad_bandit_sizes_are_usage_errors(repo_root, tmp_path):
    """Were an Orbax NotADirectoryError and a JAX slice TypeError (after checkpoints/, tb/ were written)."""
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for workdir in (afile, afile / "sub"):
        with pytest.raises(UsageError, match="not a directory"):
            train(tiny_config(repo_root, num_steps=1), workdir)
    assert afile.read_text() == "keep"
    for key, value, message in (
        ("bandit.num_contexts", 0, "bandit.num_contexts must be an integer >= 1, got 0"),
        ("bandit.num_responses", 1, "bandit.num_responses must be an integer >= 2, got 1"),
        ("bandit.nan_response", 5000, "bandit.nan_response must be -1"),
    ):
        with pytest.raises(UsageError, match=message):
            train(tiny_config(repo_root, num_steps=1, **{key: value}), tmp_path / "w")
        assert not (tmp_path / "w").exists()


def test_offline_reference_is_rejected_for_the_bandit(repo_root, tmp_path):
    """The bandit has no offline calibration table: one clear error from train(), nothing written."""
    with pytest.raises(UsageError, match="bandit problem draws its reference rewards online"):
        train(tiny_config(repo_root, num_steps=1, reference="offline"), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_prompt_batch_must_divide_over_the_data_axis(repo_root, tmp_path):
    """8 fake devices (conftest): a data axis of 8 cannot shard 3 prompts; one clear error, no workdir."""
    config = tiny_config(repo_root, num_steps=1, prompts_per_step=3, **{"mesh.data": 8})
    with pytest.raises(UsageError, match="prompts_per_step=3 must be divisible by the mesh's data axis"):
        train(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["stray"], "unexpected argument(s): stray"),
        (["--config.nosuch=1"], "not a field of the config"),
        (["--config={broken}"], "failed to load: SyntaxError"),
    ],
)
def test_cli_bad_arguments_are_one_line_exit_2(repo_root, tmp_path, capsys, extra, message):
    from infalign_jax.cli import run_main
    from infalign_jax.train import main

    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    argv = ["--config", str(repo_root / "configs" / "ctrl_bandit.py"), "--workdir", str(tmp_path / "w")]
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argv + [e.format(broken=broken) for e in extra])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert message in err and not (tmp_path / "w").exists()


def test_auto_t_picks_solver_exponential(repo_root):
    cfg = step_config(
        tiny_config(repo_root, auto_t=True, procedure="won:4", kl_budget=0.3, transform="identity")
    )
    assert cfg.transform.kind == "exp" and cfg.transform.t < -1.0 and cfg.loss.beta > 0


def test_nan_reward_stops_without_checkpoint(repo_root, tmp_path):
    constant = {"optim.schedule": "constant"}  # a run that may be extended
    train(tiny_config(repo_root, num_steps=10, checkpoint_every=5, **constant), tmp_path)
    assert Checkpointer(tmp_path, 0).latest_step() == 10
    nan = {"bandit.nan_response": 0, **constant}
    with pytest.raises(NonFiniteError, match="non-finite reward.*step 11.*last checkpoint: step 10"):
        train(tiny_config(repo_root, num_steps=20, checkpoint_every=1, **nan), tmp_path)
    assert Checkpointer(tmp_path, 0).latest_step() == 10
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 10


def _ckpt_steps(workdir):
    d = workdir / "checkpoints"
    return [int(p.name) for p in d.iterdir() if p.name.isdigit()] if d.exists() else []


def test_sigkill_resume_matches_uninterrupted_run(repo_root, tmp_path):
    n = TINY["num_steps"]
    train(tiny_config(repo_root), tmp_path / "ref")
    expected = final_logits(tmp_path / "ref", n)
    work = tmp_path / "killed"
    saved_40 = lambda: any(s >= 40 for s in _ckpt_steps(work))
    code, _ = signal_when(cli(repo_root, work), saved_40, signal.SIGKILL)
    assert code == -signal.SIGKILL and max(_ckpt_steps(work)) < n  # really killed mid-way
    res = subprocess.run(cli(repo_root, work), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    np.testing.assert_allclose(final_logits(work, n), expected, atol=1e-6, rtol=0)
    assert json.loads((work / "final_eval.json").read_text())["steps"] == n
    # Rows the killed attempt logged after its last checkpoint were dropped, not duplicated.
    steps = [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, n + 1))


def test_sigterm_saves_before_exit(repo_root, tmp_path):
    work = tmp_path / "term"
    metrics = work / "metrics.jsonl"
    code, err = signal_when(cli(repo_root, work, checkpoint_every=1000), lambda: rows(metrics) >= 5)
    assert code == 143, err[-3000:]
    last = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert _ckpt_steps(work) == [last] and 5 <= last < TINY["num_steps"]
    assert "SIGTERM: saved checkpoint" in err


def test_multi_process_run_refuses_a_mesh_leaving_devices_out(repo_root, monkeypatch):
    """mesh.data=1 (the shipped configs' default) built the mesh from jax.devices()[:1]: on 2 processes the
    second held no shard and died in put_global (the first in a collective timeout)."""
    import jax

    from infalign_jax.train import _mesh

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(UsageError, match="2-process run needs a mesh over all 8 devices.*mesh.data=0"):
        _mesh(tiny_config(repo_root, **{"mesh.data": 1}))
    assert _mesh(tiny_config(repo_root, **{"mesh.data": 0})).size == 8


def test_optim_eps_reaches_adam(repo_root):
    """config.optim.eps (the HH config sets 1e-6) is Adam's eps: a 1e-8 gradient (roundoff at pi = pi_ref)
    makes a ~lr/2 step with the default 1e-8, a ~1% one with 1e-6."""
    import jax.numpy as jnp

    from infalign_jax.train import optimizer

    steps = {}
    for eps in (None, 1e-6):
        config = tiny_config(repo_root, **({} if eps is None else {"optim.eps": eps}))
        config.optim.lr, config.optim.schedule = 1e-2, "constant"
        tx = optimizer(config, step_config(config))
        params = {"w": jnp.zeros(3)}
        updates, _ = tx.update({"w": jnp.full(3, 1e-8)}, tx.init(params), params)
        steps[eps] = float(jnp.max(jnp.abs(updates["w"]))) / 1e-2
    assert 0.4 < steps[None] < 0.6 and 0.005 < steps[1e-6] < 0.015, steps


def test_sigterm_to_one_of_two_processes_saves_on_both(repo_root, tmp_path):
    """Two `--distributed` trainer processes (2 CPU devices each, 127.0.0.1); SIGTERM reaches process 1 only.
    Both must agree to save the same step and exit 143: without the per-step agreement one process entered the
    checkpoint save (a collective) while the other ran the next train step, and both hung unsaved."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    work = tmp_path / "two"
    dist = ["--distributed", f"--coordinator=127.0.0.1:{port}", "--num_processes=2"]
    procs = [
        subprocess.Popen(
            cli(repo_root, work, checkpoint_every=1000, **{"mesh.data": 0}) + [*dist, f"--process_id={i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    metrics = work / "metrics.jsonl"
    try:
        wait_for(lambda: rows(metrics) >= 5 or procs[1].poll() is not None, procs[0], timeout=300)
        assert procs[1].poll() is None, procs[1].communicate()[1][-3000:]  # process 1 died at startup
        procs[1].send_signal(signal.SIGTERM)
        errs = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [143, 143], "\n".join(e[-2000:] for e in errs)
    saved = [int(e.split("saved checkpoint at step ")[1].split(";")[0]) for e in errs]
    last = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert saved == [last, last] and _ckpt_steps(work) == [last] and 5 <= last < TINY["num_steps"]


def test_cli_ends_with_a_summary_and_a_rerun_says_already_complete(repo_root, tmp_path, capsys):
    """The CLI prints KL and win rates of final_eval.json (beside the analytic optimum) and where the outputs
    are; rerun on the finished run it says ``already complete:`` on its first line and writes nothing."""
    from infalign_jax.train import main

    work = tmp_path / "w"
    argv = cli(repo_root, work, num_steps=2)[3:]  # the arguments after `python -m infalign_jax.train`
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    ev = json.loads((work / "final_eval.json").read_text())
    assert out[0] == "CTRL bandit: 2 steps, transform identity, β = 0.338"
    assert f"  KL(π‖π_ref)         {ev['kl']:.4f} (analytic optimum {ev['predicted']['kl']:.4f})" in out
    for name in ("bon:4", "won:4", "standard"):
        w, p = ev["win_rate"][name], ev["predicted"]["win_rate"][name]
        row = ["win", "rate", name, f"{w:.4f}", "(analytic", "optimum", f"{p:.4f})"]
        assert any(line.split() == row for line in out), name
    assert out[-1].startswith(f"  outputs: {work} (final_eval.json, metrics.jsonl, tb/, checkpoints/")

    # (Only a TensorBoard events file, empty, is added: the metrics writer opens one on every run.)
    kept = lambda p: p.is_file() and "tb" not in p.parts
    files = lambda: {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in work.rglob("*") if kept(p)}
    written = files()
    assert main(argv) == 0
    again = capsys.readouterr().out.splitlines()
    assert again[0].startswith("already complete: CTRL bandit: 2 steps")
    assert f"; outputs in {work} (final_eval.json" in again[0]
    assert again[1:] == out[1:-1]  # the same numbers; where the outputs are is said on the first line
    assert files() == written
