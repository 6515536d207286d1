"""MetricsWriter: appends by default; ``truncate=True`` (a run resumed at ``initial_step``) drops the rows an
interrupted attempt logged after that step, atomically, and purges them from TensorBoard."""

import json
import struct
import time

from tensorboardX.proto.event_pb2 import Event

from infalign_jax.metrics_log import MetricsWriter, drop_rows_after


def rows(workdir) -> list[dict]:
    return [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]


def log(workdir, steps, **kw) -> None:
    w = MetricsWriter(workdir, progress=False, **kw)
    for s in steps:
        w.write(s, {"loss": float(s)})
        if s % 2 == 0:
            w.write(s, {"eval_loss": -float(s)})
    w.close()


def events(path) -> list[Event]:
    """The records of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        out.append(Event.FromString(data[i + 12 : i + 12 + n]))
        i += 12 + n + 4
    return out


def test_default_appends_and_keeps_every_existing_row(tmp_path):
    log(tmp_path, [1, 2, 3, 4])
    before = (tmp_path / "metrics.jsonl").read_text()
    log(tmp_path, [3, 4], initial_step=2)  # the old API (train.py): nothing dropped
    assert (tmp_path / "metrics.jsonl").read_text().startswith(before)
    assert [r["step"] for r in rows(tmp_path)] == [1, 2, 2, 3, 4, 4, 3, 4, 4]


def test_truncate_drops_rows_after_the_resumed_step_so_each_step_is_logged_once(tmp_path):
    log(tmp_path, [1, 2, 3, 4, 5])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"note": "no step"}\n{"step": 6, "loss": 6.')  # a row without a step, then a torn write
    kept = (tmp_path / "metrics.jsonl").read_text().splitlines()[:3]  # steps 1, 2, 2
    time.sleep(1.1)  # TensorBoard event files are named by the second: keep the first one
    log(tmp_path, [3, 4, 5, 6], initial_step=2, truncate=True)
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.splitlines()[:3] == kept  # the rows up to the checkpoint, byte for byte
    got = [(r.get("step"), "eval_loss" in r) for r in rows(tmp_path)]
    assert got == [(1, False), (2, False), (2, True), (None, False)] + [
        (s, e) for s in (3, 4, 5, 6) for e in ((False, True) if s % 2 == 0 else (False,))
    ]
    # TensorBoard: the resumed writer's event file tells TensorBoard to hide the old events from step 3 on.
    first, resumed = sorted((tmp_path / "tb").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    starts = [e.step for e in events(resumed) if e.HasField("session_log")]
    assert starts == [3] and not [e for e in events(first) if e.HasField("session_log")]


def test_drop_rows_after_leaves_a_file_with_nothing_to_drop_untouched(tmp_path):
    log(tmp_path, [1, 2])
    path = tmp_path / "metrics.jsonl"
    inode, text = path.stat().st_ino, path.read_text()
    assert drop_rows_after(path, 2) == 0 and drop_rows_after(path, 7) == 0
    assert path.stat().st_ino == inode and path.read_text() == text
    assert drop_rows_after(path, 1) == 2  # rewritten atomically (a new file), the step-1 row kept
    assert path.stat().st_ino != inode and path.read_text() == text.splitlines(keepends=True)[0]
    assert drop_rows_after(tmp_path / "missing.jsonl", 0) == 0 and not (tmp_path / "missing.jsonl").exists()


def test_flush_puts_events_on_disk_and_quick_resumes_and_torn_lines_lose_nothing(tmp_path):
    """tensorboardX flushes every 120 s: a run killed after a checkpoint lost those steps' events for good
    (flush() is now called before every checkpoint). Two writers started within one second shared one event
    file name and the second wiped the first's events; a row appended after a torn line was glued onto it."""
    w = MetricsWriter(tmp_path, progress=False)
    for s in (1, 2, 3):
        w.write(s, {"loss": float(s)})
    w.flush()  # what train/sft do right before saving a checkpoint; the process could die here
    (first,) = (tmp_path / "tb").iterdir()
    assert [e.step for e in events(first) if e.summary.value] == [1, 2, 3]
    w.close()
    log(tmp_path, [4], initial_step=3, truncate=True)  # within the same second: a second event file
    files = list((tmp_path / "tb").iterdir())
    steps = sorted(e.step for f in files for e in events(f) if e.summary.value)
    assert len(files) == 2 and steps == [1, 2, 3, 4, 4]  # step 4: loss and eval_loss
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # killed mid-row
    log(tmp_path, [6])  # default: append
    tail = (tmp_path / "metrics.jsonl").read_text().splitlines()[-3:]
    assert tail == ['{"step": 5, "lo', '{"step": 6, "loss": 6.0}', '{"step": 6, "eval_loss": -6.0}']
