"""The run harness (infalign_jax/harness/): optimizer, checkpointer, workdir claim, loop tail."""

import hashlib
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from infalign_jax import run_settings
from infalign_jax.errors import UsageError
from infalign_jax.harness.checkpoint import DIGESTS, Checkpointer
from infalign_jax.harness.loop import StepLoop, training_loop
from infalign_jax.harness.optimizer import lr_schedule, make_optimizer, matrices_only
from infalign_jax.harness.workdir import ResumeRule, claim, open_run, settings_in_checkpoint
from infalign_jax.preemption import Preempted

# ------------------------------------------------------------------------------------------------ optimizer


@pytest.mark.parametrize("warmup", [0, 3])
@pytest.mark.parametrize("lr, frac", [(0.7, 0.1), (2e-3, 0.1), (1e-2, 1.0)])
def test_lr_schedule_with_end_value_is_optax_warmup_cosine_bit_for_bit(lr, frac, warmup):
    """SFT's schedule was optax.warmup_cosine_decay_schedule; its floor alpha = (lr*f)/lr differs from f in
    the last bit for lr=0.7, f=0.1 — end_value reproduces it exactly."""
    steps = 10
    ours = lr_schedule(lr, steps, warmup, "cosine", end_value=lr * frac)
    theirs = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr * frac)
    counts = jnp.arange(steps + 3)
    np.testing.assert_array_equal(np.asarray(jax.vmap(ours)(counts)), np.asarray(jax.vmap(theirs)(counts)))
    np.testing.assert_allclose(float(ours(steps)), lr * frac, rtol=1e-6)  # the end value (float32) reached


def test_weight_decay_mask_matrices_only_and_default_decays_everything():
    """A zero gradient leaves only the decoupled decay: update = -lr * wd * p (constant lr 0.1, wd 0.5)."""
    params = {"w": jnp.ones((2, 2)), "scale": jnp.ones(3)}
    zero = jax.tree.map(jnp.zeros_like, params)
    for mask, scale_update in ((None, -0.05), (matrices_only, 0.0)):
        tx = make_optimizer(
            0.1, 4, 0, "constant", weight_decay=0.5, max_grad_norm=None, weight_decay_mask=mask
        )
        updates, _ = tx.update(zero, tx.init(params), params)
        np.testing.assert_allclose(np.asarray(updates["w"]), -0.05, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(updates["scale"]), scale_update, rtol=1e-6)


def test_optimizer_bad_input():
    with pytest.raises(UsageError, match="learning rate must be > 0"):
        make_optimizer(0.0, 10)
    with pytest.raises(UsageError, match="unknown lr schedule 'step'"):
        lr_schedule(0.1, 10, schedule="step")


# ---------------------------------------------------------------------------------------------- checkpointer


def _tree(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "b": jnp.arange(4, dtype=jnp.int32),
        },
        "opt": [jnp.asarray(rng.normal(size=5), jnp.bfloat16), jnp.float32(seed)],
        "step": jnp.int32(seed),
    }


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def test_checkpointer_round_trip_of_any_pytree_with_digests(tmp_path):
    ckpt = Checkpointer(tmp_path, 0, 3, dirname="ckpts", item="train")
    for step in (1, 2):
        ckpt.save(step, _tree(step), {"step": step, "loader": {"epoch": 0, "index": 7 * step}})
    ckpt.close()
    ckpt.close()  # a second close does nothing
    assert (tmp_path / "ckpts").is_dir() and not (tmp_path / "checkpoints").exists()

    again = Checkpointer(tmp_path, 0, 3, dirname="ckpts", item="train")
    assert again.all_steps() == [1, 2] and again.latest_step() == 2
    items, meta = again.restore(_tree(0), 1)
    _assert_tree_equal(items, _tree(1))
    assert meta == {"step": 1, "loader": {"epoch": 0, "index": 7}}
    assert again.meta() == {"step": 2, "loader": {"epoch": 0, "index": 14}}
    _assert_tree_equal(again.restore_raw(2), _tree(2))
    found = again.restore_intact(_tree(0))
    assert (found.step, found.damaged, found.meta["step"]) == (2, [], 2)
    _assert_tree_equal(found.items, _tree(2))
    # digests.json records the SHA-256 of every other file of the step
    step_dir = tmp_path / "ckpts" / "2"
    recorded = json.loads((step_dir / DIGESTS).read_text())
    files = {p.relative_to(step_dir).as_posix(): p for p in step_dir.rglob("*") if p.is_file()}
    assert set(recorded) == set(files) - {DIGESTS} and any(n.startswith("train/") for n in recorded)
    for name, digest in recorded.items():
        assert hashlib.sha256(files[name].read_bytes()).hexdigest() == digest
    again.close()


def _flip_a_data_byte(step_dir):
    data = sorted(p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in p.as_posix())
    raw = bytearray(data[0].read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data[0].write_bytes(bytes(raw))


def test_damaged_checkpoint_falls_back_to_the_newest_intact_one(tmp_path):
    ckpt = Checkpointer(tmp_path, 0, 3)
    for step in (1, 2, 3):
        ckpt.save(step, _tree(step), {"step": step})
    ckpt.close()
    _flip_a_data_byte(tmp_path / "checkpoints" / "3")
    ckpt = Checkpointer(tmp_path, 0, 3)
    # step 2 restores, but the caller's check says its items are not step 2's: damaged too
    validate = lambda items, meta, step: "wrong step" if step == 2 else None
    found = ckpt.restore_intact(_tree(0), validate)
    assert found.step == 1 and [d.step for d in found.damaged] == [3, 2]
    assert "SHA-256 mismatch" in found.damaged[0].reason and found.damaged[1].reason == "wrong step"
    _assert_tree_equal(found.items, _tree(1))
    ckpt.set_aside(found.damaged)
    assert ckpt.all_steps() == [1]
    assert sorted(p.name for p in (tmp_path / "checkpoints.damaged").iterdir()) == ["2", "3"]

    # a UsageError of the check (the checkpoint does not fit the run) is not damage: it propagates
    def does_not_fit(items, meta, step):
        raise UsageError("other model")

    with pytest.raises(UsageError, match="other model"):
        ckpt.restore_intact(_tree(0), does_not_fit)
    _flip_a_data_byte(tmp_path / "checkpoints" / "1")
    with pytest.raises(UsageError, match=r"holds no intact checkpoint \(step 1: .*SHA-256 mismatch"):
        ckpt.restore_intact(_tree(0))
    ckpt.close()


# ------------------------------------------------------------------------------------------------ loop tail


class _Log:
    """A writer and a checkpointer that record the calls made on them, in order."""

    def __init__(self, save_every: int = 0):
        self.calls = []
        self.save_every = save_every

    def flush(self):
        self.calls.append("flush")

    def close(self):
        self.calls.append("close")

    def should_save(self, step):
        return self.save_every > 0 and step % self.save_every == 0

    def save(self, step, items, meta=None):
        self.calls.append(("save", step, items, meta))

    def wait(self):
        self.calls.append("wait")


def test_loop_saves_when_due_after_flushing():
    log = _Log(save_every=2)
    loop = StepLoop(log, log, 5, lambda: False)
    for step in range(1, 6):
        log.calls.append(("step", step))
        loop.end_step(step, {"x": step}, {"m": step})
    saves = [("save", s, {"x": s}, {"m": s}) for s in (2, 4, 5)]  # every 2 steps, and the last one
    expected = [("step", 1), ("step", 2), "flush", saves[0], ("step", 3), ("step", 4), "flush", saves[1]]
    assert log.calls == [*expected, ("step", 5), "flush", saves[2]]


def test_loop_on_sigterm_saves_waits_and_raises_preempted():
    """SIGTERM is asked once per step (a collective: save_due then end_step ask it once), then the step is
    saved (metrics flushed first), the save waited for, Preempted raised."""
    asked = []
    log = _Log(save_every=0)
    loop = StepLoop(log, log, 100, lambda: asked.append(1) or len(asked) >= 3)
    for step in (1, 2):
        assert not loop.save_due(step)
        loop.end_step(step, step)
    assert loop.save_due(3) and loop.sigterm
    with pytest.raises(Preempted, match="SIGTERM: saved checkpoint at step 3; exiting"):
        loop.end_step(3, 3)
    assert len(asked) == 3 and log.calls == ["flush", ("save", 3, 3, None), "wait"]


def test_training_loop_catches_a_real_sigterm_and_closes_writer_then_checkpointer():
    log = _Log()
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted), training_loop(log, log, 10) as loop:
        loop.end_step(1, "a")
        os.kill(os.getpid(), signal.SIGTERM)  # only sets the flag inside the block
        loop.end_step(2, "b")
    assert log.calls == ["flush", ("save", 2, "b", None), "wait", "close", "close"]
    assert signal.getsignal(signal.SIGTERM) == previous


# ------------------------------------------------------------------------------------------ workdir claims

RULE = ResumeRule(resumable=("progress",), length_key="steps", hint="use another --workdir")


def _files(path):
    return {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_claim_records_first_and_refuses_other_settings_untouched(tmp_path):
    work = tmp_path / "w"
    settings = {"seed": 0, "steps": 3, "progress": True}
    assert claim(work, settings, rule=RULE) is None
    assert run_settings.recorded(work) == settings
    assert claim(work, {**settings, "progress": False}, rule=RULE) == settings  # resumable: accepted
    assert run_settings.recorded(work) == settings  # an existing record is not rewritten
    before = _files(work)
    with pytest.raises(UsageError, match=r"^W holds a run with other settings \(seed: 0 -> 1\)"):
        claim(work, {**settings, "seed": 1}, rule=RULE, where="W")
    with pytest.raises(UsageError, match=r"other settings \(steps: 3 -> 4\)"):  # steps: not resumable
        claim(work, {**settings, "steps": 4}, rule=RULE)
    length = r"holds a run of steps 3, so resuming it with steps 4 would not give a 4-step run — use another"
    with pytest.raises(UsageError, match=length):  # resumable, but only a run that is extendable
        claim(work, {**settings, "steps": 4}, rule=ResumeRule(resumable=("steps",), length_key="steps"))
    assert _files(work) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(
        UsageError, match="--workdir .*file cannot be a directory: it exists and is not a dir"
    ):
        claim(tmp_path / "file", settings, rule=RULE, what="--workdir")


def test_claim_refuses_outputs_without_a_record_and_reads_older_versions(tmp_path):
    work = tmp_path / "w"
    (work / "tb").mkdir(parents=True)
    claim(work, {"seed": 0}, rule=RULE, outputs=("tb",))  # an empty directory holds no run
    (work / run_settings.RECORD).unlink()
    (work / "tb" / "events").write_text("")
    with pytest.raises(UsageError, match=r"holds outputs of an earlier run \(tb\) but no record"):
        claim(work, {"seed": 0}, rule=RULE, outputs=("tb",))
    # an older version's record without "steps": compared without it (ignore_absent), left as it was
    (work / run_settings.RECORD).write_text(json.dumps({"seed": 0}))
    assert claim(work, {"seed": 0, "steps": 5}, rule=RULE, ignore_absent=("steps",)) == {"seed": 0}
    assert run_settings.recorded(work) == {"seed": 0}
    older = lambda workdir, recorded, settings: {**recorded, "steps": 2}
    with pytest.raises(UsageError, match=r"other settings \(steps: 2 -> 5\)"):
        claim(work, {"seed": 0, "steps": 5}, rule=RULE, older=older, ignore_absent=("steps",))


def _open(work, settings, **kw):
    kw = {
        "rule": ResumeRule(length_key="steps"),
        "outputs": ("checkpoints", "done"),
        "finished": ("done",),
    } | kw
    return open_run(work, settings, _tree(0), **kw)


def test_open_run_resumes_and_refuses(tmp_path, capsys):
    work = tmp_path / "w"
    work.mkdir()
    run = _open(work, {"seed": 0, "steps": 3}, save_every=1, max_to_keep=3)
    assert (run.resumed, run.step, run.meta) == (False, 0, {})
    assert run_settings.recorded(work) == {"seed": 0, "steps": 3}
    for step in (1, 2):
        run.checkpointer.save(step, _tree(step), {"config": {"seed": 0, "steps": 3}})
    run.checkpointer.close()

    run = _open(work, {"seed": 0, "steps": 3})
    assert (run.resumed, run.step) == (True, 2)
    _assert_tree_equal(run.items, _tree(2))
    run.checkpointer.close()
    before = _files(work)
    longer = r"holds a run trained for 2 steps, more than steps 1; use another workdir \(or steps >= 2\)"
    with pytest.raises(UsageError, match=longer):
        _open(work, {"seed": 0, "steps": 1}, rule=ResumeRule(("steps",), extendable=True, length_key="steps"))
    with pytest.raises(UsageError, match=r"other settings \(seed: 0 -> 1\)"):
        _open(work, {"seed": 1, "steps": 3})
    assert _files(work) == before

    # an older version's workdir (no record): its newest checkpoint's config decides, then it is recorded
    (work / run_settings.RECORD).unlink()
    with pytest.raises(UsageError, match=r"other settings \(seed: 0 -> 1\)"):
        _open(work, {"seed": 1, "steps": 3}, older=settings_in_checkpoint("config"))
    _flip_a_data_byte(work / "checkpoints" / "2")
    capsys.readouterr()
    run = _open(work, {"seed": 0, "steps": 3}, older=settings_in_checkpoint("config"))
    run.checkpointer.close()
    assert run.step == 1 and run_settings.recorded(work) == {"seed": 0, "steps": 3}
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: checkpoint 2 is damaged (")
    assert err[0].endswith(
        f"resuming from step 1 (damaged checkpoints moved to {work / 'checkpoints.damaged'})"
    )

    # a finished run whose checkpoints are gone: starting over would overwrite its outputs
    import shutil

    shutil.rmtree(work / "checkpoints")
    (work / "done").write_text("{}")
    with pytest.raises(UsageError, match=r"holds a finished run \(done\) but no checkpoint"):
        _open(work, {"seed": 0, "steps": 3})
