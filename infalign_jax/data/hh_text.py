"""Anthropic HH-RLHF text: one dialogue or preference pair → shared prompt + replies, one JSONL line → a
validated record, and the deterministic train / eval split (InfAlign, Sec. 5 aligns on Anthropic HH).

Each input line is ``{"chosen": str, "rejected": str}``; both are whole dialogues
(``\\n\\nHuman: ...\\n\\nAssistant: ...``) that share every turn but the last Assistant reply.
:func:`split_pair` splits a pair into the shared prompt (dialogue up to and including the last
``\\n\\nAssistant:``) and the two replies, and checks that both texts really share that prompt;
:func:`prompt_split` puts ≈90/10 of prompts into ``train`` / ``eval`` by a stable hash of the prompt, so one
prompt never lands in both splits. :func:`iter_pairs` reads gzip'd JSONL files line by line: a bad line
(malformed JSON, missing keys, pairs whose prompts differ) raises one :class:`UsageError` naming the file and
line, or with ``skip_bad`` is counted in a :class:`ParseReport`.

Text and line handling only: no TFDS, no input directories (those are :mod:`infalign_jax.data.hh_dataset`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infalign_jax.errors import UsageError

ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"
SPLITS = ("train", "eval")
DEFAULT_EVAL_PERCENT = 10


def split_dialogue(text: str) -> tuple[str, str]:
    """Splits one HH dialogue into ``(prompt, reply)``.

    ``prompt`` is ``text`` up to and including the last ``"\\n\\nAssistant:"``; ``reply`` is the rest,
    stripped.
    Raises :class:`UsageError` if the text has no Assistant turn.
    """
    i = text.rfind(ASSISTANT)
    if i < 0:
        raise UsageError("dialogue has no '\\n\\nAssistant:' turn")
    cut = i + len(ASSISTANT)
    return text[:cut], text[cut:].strip()


def split_pair(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Splits a preference pair into ``(prompt, chosen_reply, rejected_reply)`` and checks the prompt is
    shared.

    The prompt is the shorter of the two texts' "up to the last Assistant:" prefixes that both texts start
    with. For almost all pairs both prefixes are equal; a few real HH replies themselves contain
    ``"\\n\\nAssistant:"`` (the model went on writing turns), and then the other text's prefix is the
    shared prompt. Raises :class:`UsageError` when no such shared prompt exists (the pair's dialogues differ
    before the final reply).
    """
    prompt_c, _ = split_dialogue(chosen)
    prompt_r, _ = split_dialogue(rejected)
    for prompt in sorted({prompt_c, prompt_r}, key=len):
        if chosen.startswith(prompt) and rejected.startswith(prompt):
            return prompt, chosen[len(prompt) :].strip(), rejected[len(prompt) :].strip()
    n = 0
    while n < min(len(prompt_c), len(prompt_r)) and prompt_c[n] == prompt_r[n]:
        n += 1
    raise UsageError(f"chosen and rejected do not share a prompt (they differ from character {n})")


def turn_spans(text: str) -> list[tuple[str, int, int]]:
    """``[(role, start, end), ...]``: every turn's text as the character span ``text[start:end]`` between its
    role marker and the next marker (of either role) or the end; ``role`` is ``"Human"`` or ``"Assistant"``.

    The markers themselves lie outside every span; text before the first marker is dropped.
    """
    marker_at = re.compile(f"{re.escape(HUMAN)}|{re.escape(ASSISTANT)}")
    marks = list(marker_at.finditer(text))
    return [
        (m.group().strip().rstrip(":"), m.end(), marks[k + 1].start() if k + 1 < len(marks) else len(text))
        for k, m in enumerate(marks)
    ]


def dialogue_turns(text: str) -> list[tuple[str, str]]:
    """Splits a dialogue into ``[(role, text), ...]`` with role ``"Human"`` or ``"Assistant"`` (texts
    stripped).

    Text before the first turn marker (normally empty) is dropped. Used for display.
    """
    return [(role, text[a:b].strip()) for role, a, b in turn_spans(text)]


def prompt_split(prompt: str, eval_percent: int = DEFAULT_EVAL_PERCENT) -> str:
    """``"eval"`` for ≈``eval_percent``% of prompts, else ``"train"``: a stable (sha256) hash of the prompt
    text."""
    h = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")
    return "eval" if h % 1000 < 10 * eval_percent else "train"


@dataclass
class ParseReport:
    """Counts of a parse: examples kept per split and lines skipped per reason (only with ``skip_bad``)."""

    n_lines: int = 0
    kept: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"n_lines": self.n_lines, "kept": dict(self.kept), "skipped": dict(self.skipped)}


def iter_pairs(
    files: Sequence[Path], skip_bad: bool = False, report: ParseReport | None = None
) -> Iterator[tuple[int, str, str, str]]:
    """Yields ``(id, prompt, chosen_reply, rejected_reply)`` for every valid line of ``files`` in order.

    ``id`` is the line's position in the concatenation of all files (0-based, counting skipped lines too, so
    ids are stable under ``skip_bad``). A bad line raises :class:`UsageError` ``"<file>:<line>: <problem>"``
    unless ``skip_bad``, which counts it in ``report.skipped`` by reason.
    """
    report = report if report is not None else ParseReport()
    gid = 0
    for path in files:
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:  # universal newlines: \r\n, \r -> \n
                text = f.read()
            # Split on \n only: str.splitlines() also breaks at U+2028/U+2029/U+0085 and \x1c-\x1e, which
            # JSON allows raw inside strings (that split valid lines and shifted every later id).
            lines = text.split("\n")
            if lines[-1] == "":
                lines.pop()  # the final newline ends the last line; it does not start another
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: cannot read gzip'd UTF-8 text: {e}") from e
        for lineno, line in enumerate(lines, start=1):
            gid += 1
            if not line.strip():
                continue
            report.n_lines += 1
            try:
                yield (gid - 1, *_parse_line(line))
            except _BadLine as e:
                if not skip_bad:
                    raise UsageError(f"{path}:{lineno}: {e} (use --skip-bad to skip such lines)") from None
                report.skipped[e.reason] += 1


class _BadLine(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _parse_line(line: str) -> tuple[str, str, str]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise _BadLine("malformed_json", f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise _BadLine("malformed_json", f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("chosen", "rejected") if not isinstance(obj.get(k), str)]
    if missing:
        raise _BadLine("missing_key", f"missing or non-string key(s): {', '.join(missing)}")
    for key in ("chosen", "rejected"):
        try:
            obj[key].encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate escape such as "\ud800": valid JSON, not text
            raise _BadLine(
                "invalid_unicode",
                f"{key} holds {obj[key][e.start]!r} at character {e.start}: a lone UTF-16 surrogate",
            ) from None
    try:
        return split_pair(obj["chosen"], obj["rejected"])
    except UsageError as e:
        reason = "no_assistant_turn" if "no '" in str(e) else "prompt_mismatch"
        raise _BadLine(reason, str(e)) from None
