"""Damaged checkpoints and deletions inside a workdir (issue 18): a rerun never mixes settings or overwrites a
run's outputs, a damaged newest checkpoint falls back to the newest intact one with one warning line, and a
workdir without an intact checkpoint is refused with one error line, every file untouched.

Each case copies one tiny finished 3-step workdir (checkpoints 2 and 3) and runs the CLI's main in process
(``cli.run_main``: exit code and stderr as from the command line)."""

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest

from infalign_jax import run_settings
from infalign_jax.cli import run_main
from infalign_jax.harness.checkpoint import DAMAGED_DIR, DIGESTS
from infalign_jax.train import main as train_main

TINY = (
    "--config.num_steps=3 --config.num_samples=8 --config.num_ref=8 --config.bandit.num_contexts=4 "
    "--config.prompts_per_step=4 --config.bandit.num_responses=16 --config.checkpoint_every=1 "
    "--config.progress=False"
).split()


def run(repo_root, workdir, *extra) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of ``python -m infalign_jax.train TINY --workdir workdir extra``."""
    argv = ["--config", str(repo_root / "configs" / "ctrl_bandit.py"), *TINY, "--workdir", str(workdir)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        run_main(train_main, [*argv, *extra])
    return exit_.value.code, [ln for ln in err.getvalue().splitlines() if ln.strip()]


def hashes(workdir: Path) -> dict[str, str]:
    return {
        p.relative_to(workdir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(workdir.rglob("*"))
        if p.is_file()
    } | {p.relative_to(workdir).as_posix() + "/": "dir" for p in workdir.rglob("*") if p.is_dir()}


def without_timings(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "time_ms"}


@pytest.fixture(scope="module")
def finished(repo_root, tmp_path_factory) -> Path:
    """A finished 3-step run (checkpoints 2 and 3)."""
    work = tmp_path_factory.mktemp("faults") / "base"
    code, lines = run(repo_root, work)
    assert code == 0, lines
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["2", "3"]
    return work


@pytest.fixture
def work(finished, tmp_path) -> Path:
    w = tmp_path / "w"
    shutil.copytree(finished, w)
    return w


def assert_refused(repo_root, work, message, *extra):
    before = hashes(work)
    code, lines = run(repo_root, work, *extra)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message in lines[0], lines[0]
    assert hashes(work) == before


def test_settings_are_recorded_at_the_workdir_level(finished):
    recorded = run_settings.recorded(finished)
    assert recorded["num_steps"] == 3 and recorded["beta"] == 0.338
    assert recorded["optim"]["schedule"] == "cosine"


def test_other_settings_refused_without_checkpoints(repo_root, work):
    """Were exit 0, metrics.jsonl and final_eval.json overwritten by a different run, tb/ mixing both."""
    shutil.rmtree(work / "checkpoints")
    assert_refused(
        repo_root, work, "other settings (beta: 0.338 -> 0.9; transform: 'identity' -> 'exp:8')",
        "--config.beta=0.9", "--config.transform=exp:8",
    )  # fmt: skip
    cosine = "holds a run of num_steps 3; with optim.schedule 'cosine'"
    assert_refused(repo_root, work, cosine, "--config.num_steps=5")


def test_same_settings_without_checkpoints_refused_not_overwritten(repo_root, work):
    """A finished run whose checkpoints are gone: starting over would overwrite its outputs."""
    shutil.rmtree(work / "checkpoints")
    assert_refused(repo_root, work, "holds a finished run (final_eval.json) but no checkpoint")


def test_other_settings_refused_when_the_checkpoint_meta_is_gone(repo_root, work):
    """Was silently accepted: ``meta()`` returned {} and the old run resumed under the new settings."""
    shutil.rmtree(work / "checkpoints" / "3" / "meta")
    assert_refused(repo_root, work, "other settings (beta: 0.338 -> 0.9)", "--config.beta=0.9")


def test_outputs_without_any_settings_record_refused(repo_root, work):
    (work / run_settings.RECORD).unlink()
    shutil.rmtree(work / "checkpoints")
    assert_refused(repo_root, work, "no record of its settings (settings.json)")


def test_workdir_of_an_older_version_is_checked_against_its_checkpoint(repo_root, work):
    """Without settings.json (written before it existed) the newest checkpoint's config decides; a resume
    with the same settings records them."""
    (work / run_settings.RECORD).unlink()
    assert_refused(repo_root, work, "other settings (beta: 0.338 -> 0.9)", "--config.beta=0.9")
    code, lines = run(repo_root, work)
    assert code == 0 and lines == []
    assert run_settings.recorded(work)["beta"] == 0.338


def _data_files(step_dir: Path) -> list[Path]:
    """The OCDBT data files of the saved state (``d/`` at the top: written at the merge that ends a save, and
    ``ocdbt.process_0/d/``: the process's own)."""
    return sorted((step_dir / "state").glob("d/*")) + sorted((step_dir / "state").glob("ocdbt.process_0/d/*"))


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def _garbage(p: Path) -> None:
    p.write_text("{not json")


def _rmtree(p: Path) -> None:
    shutil.rmtree(p)


DAMAGES = {
    "manifest_truncated": lambda s: _truncate(s / "state" / "manifest.ocdbt"),
    "meta_garbage": lambda s: _garbage(s / "meta" / "metadata"),
    "meta_removed": lambda s: _rmtree(s / "meta"),
    "state_metadata_removed": lambda s: (s / "state" / "_METADATA").unlink(),
    "state_removed": lambda s: _rmtree(s / "state"),
    "sharding_garbage": lambda s: _garbage(s / "state" / "_sharding"),
    "data_files_truncated": lambda s: [_truncate(p) for p in _data_files(s)],
    "data_byte_flipped": lambda s: _flip_byte(_data_files(s)[0]),
}


@pytest.mark.parametrize("digests", [True, False], ids=["digests", "orbax_only"])
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_newest_checkpoint_falls_back_to_the_intact_one(repo_root, work, damage, digests):
    """Were raw Orbax / JSON tracebacks (DATA_LOSS, JSONDecodeError, KeyError: Item "state", ...) and no
    fallback. The run resumes from step 2, redoes step 3 and writes the same final evaluation. Without the
    digest record (``orbax_only``: a checkpoint of an older version) Orbax's own errors must catch it — except
    for ``state/_sharding``, which Orbax does not read when restoring onto given shardings: that checkpoint
    restores as saved, and the run resumes from step 3 (OCDBT checksums the data it reads: no flipped byte of
    a read file restored as other numbers, see docs/reliability.md)."""
    expected = without_timings(json.loads((work / "final_eval.json").read_text()))
    (work / "final_eval.json").unlink()  # the run is redone from step 2 and writes it again
    if not digests:
        (work / "checkpoints" / "3" / DIGESTS).unlink()
    DAMAGES[damage](work / "checkpoints" / "3")
    code, lines = run(repo_root, work)
    harmless = not digests and damage == "sharding_garbage"
    if harmless:
        assert code == 0 and lines == []
    else:
        assert code == 0 and len(lines) == 1, lines
        assert lines[0].startswith("warning: checkpoint 3 is damaged (")
        assert "resuming from step 2" in lines[0]
        assert (work / DAMAGED_DIR / "3").is_dir()  # kept for inspection, out of the run's way
        assert (work / "checkpoints" / "3" / DIGESTS).is_file()  # saved anew
    assert without_timings(json.loads((work / "final_eval.json").read_text())) == expected
    steps = [json.loads(ln)["step"] for ln in (work / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_flipped_byte_is_found_by_the_digest(repo_root, work):
    """The warning names the file whose SHA-256 no longer matches the one recorded at save time."""
    target = _data_files(work / "checkpoints" / "3")[0]
    _flip_byte(target)
    code, lines = run(repo_root, work)
    rel = target.relative_to(work / "checkpoints" / "3").as_posix()
    assert code == 0 and lines[0].startswith(f"warning: checkpoint 3 is damaged ({rel} differs from"), lines


def test_no_intact_checkpoint_is_refused(repo_root, work):
    _garbage(work / "checkpoints" / "3" / "meta" / "metadata")
    (work / "checkpoints" / "2" / "state" / "_METADATA").unlink()
    assert_refused(repo_root, work, "holds no intact checkpoint (step 3: ")


def test_empty_step_directory_is_not_a_trained_run(repo_root, work):
    """Was "holds a run trained for 99 steps": an empty checkpoints/99 is a damaged checkpoint, skipped."""
    (work / "checkpoints" / "99").mkdir()
    written = (work / "final_eval.json").read_bytes()
    code, lines = run(repo_root, work)
    assert code == 0 and len(lines) == 1 and lines[0].startswith("warning: checkpoint 99 is damaged"), lines
    assert "resuming from step 3" in lines[0]
    assert (work / "final_eval.json").read_bytes() == written  # the finished run's outputs are kept
    assert not (work / "checkpoints" / "99").exists()


def test_run_interrupted_before_its_first_checkpoint_starts_over(repo_root, work):
    """Settings recorded, logs written, no checkpoint and no final evaluation (a run killed before its first
    save): the same settings start over — the same steps again, each logged once."""
    expected = without_timings(json.loads((work / "final_eval.json").read_text()))
    shutil.rmtree(work / "checkpoints")
    (work / "final_eval.json").unlink()
    code, lines = run(repo_root, work)
    assert code == 0 and lines == []
    assert without_timings(json.loads((work / "final_eval.json").read_text())) == expected
    assert [json.loads(ln)["step"] for ln in (work / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
