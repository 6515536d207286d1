"""Documentation of an ml_collections config file, read from its own source: what ``--help`` lists.

Every field a config file's ``get_config()`` sets is listed with its dotted name, its default (the value
``get_config()`` returns) and a one-line description taken from the file's comments, so the documentation
lives in one place, beside the value::

    # CTRL objective (paper Sec. 4, Alg. 1).           <- section heading: a comment opening a paragraph
    c.transform = "identity"  # identity | log | ...   <- the field's description: its trailing comment
    c.beta = 0.338  # KL penalty weight

A field without a trailing comment takes the comment block directly above it (when that block does not open
the paragraph); one with neither is still listed, with its name and default. Only the standard library and
``ml_collections`` are used: documenting a config needs no data, model or accelerator.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FieldDoc:
    """One config field: dotted ``name``, ``default`` value, ``description`` (one line, may be empty) and the
    ``section`` heading of the paragraph that sets it (may be empty)."""

    name: str
    default: object
    description: str = ""
    section: str = ""


def _dotted(target: ast.expr) -> str | None:
    """``"a.b"`` for an assignment target ``c.a.b`` (an attribute chain on a name), else None."""
    parts = []
    while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
    return ".".join(reversed(parts)) if parts and isinstance(target, ast.Name) else None


def _comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """``(trailing, standalone)``: comment text by line number, for comments after code on their line and
    comments alone on their line."""
    trailing, standalone = {}, {}
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        line, col = tok.start
        text = tok.string.lstrip("#").strip()
        alone = not lines[line - 1][:col].strip()
        book = standalone if alone else trailing
        book[line] = f"{book[line]} {text}" if line in book else text
    return trailing, standalone


def source_docs(source: str) -> dict[str, tuple[str, str]]:
    """``{dotted name: (description, section)}`` for every ``X.a.b = value`` assignment in a config file's
    source (later assignments of a name win). See the module docstring for where each comes from."""
    trailing, standalone = _comments(source)
    lines = source.splitlines()
    blank = lambda n: n < 1 or not lines[n - 1].strip()
    docs = {}
    for node in sorted(ast.walk(ast.parse(source)), key=lambda n: getattr(n, "lineno", 0)):
        if not isinstance(node, ast.Assign | ast.AnnAssign):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = [n for n in map(_dotted, targets) if n]
        if not names:
            continue
        first, last = node.lineno, node.end_lineno or node.lineno
        description = " ".join(trailing[n] for n in range(first, last + 1) if n in trailing)
        # The comment block directly above, and the paragraph's opening comment block (its heading).
        above = first - 1
        while above >= 1 and above in standalone:
            above -= 1
        block = " ".join(standalone[n] for n in range(above + 1, first))
        start = first
        while not blank(start - 1):
            start -= 1
        heading_end = start
        while heading_end in standalone:
            heading_end += 1
        section = " ".join(standalone[n] for n in range(start, heading_end))
        if block and not description and above + 1 != start:  # a note on this field, not the heading
            description = block.split(". ")[0].rstrip(".")  # its first sentence: one line
        for name in names:
            docs[name] = (description, section)
    return docs


def _leaves(config, prefix: str = "") -> list[tuple[str, object]]:
    """``[(dotted name, value)]`` of a ConfigDict's non-ConfigDict values, in insertion order."""
    import ml_collections

    out = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def config_docs(config, source: str) -> list[FieldDoc]:
    """Every field of ``config`` (a ConfigDict made by the file whose text is ``source``) in the order the
    file sets them, with the descriptions and section headings of :func:`source_docs`; fields the source does
    not assign by name (set in a loop, say) follow, with name and default only."""
    docs = source_docs(source)
    order = {name: i for i, name in enumerate(docs)}
    fields = [FieldDoc(name, value, *docs.get(name, ("", ""))) for name, value in _leaves(config)]
    return sorted(fields, key=lambda f: order.get(f.name, len(order)))


def config_file_docs(path: str | Path, *args: str) -> list[FieldDoc]:
    """:func:`config_docs` of the config file ``path`` (``get_config(*args)``; a file that fails to load is
    a :class:`~infalign_jax.errors.UsageError`)."""
    from infalign_jax.cli import load_config_file

    config = load_config_file(path, *args)
    return config_docs(config, Path(path).read_text())


def format_fields(fields: list[FieldDoc], width: int = 44) -> str:
    """The field listing of ``--help``: section headings as ``# ...`` lines, then one ``name = default``
    line per field with its description beside it."""
    lines, section = [], None
    for f in fields:
        if f.section != section:  # a new section, or the end of one: a blank line between them
            section = f.section
            lines += ["", f"  # {section}"] if section else [""]
        head = f"  {f.name} = {f.default!r}"
        lines.append(f"{head:<{width}}  {f.description}".rstrip() if f.description else head)
    return "\n".join(lines).strip("\n")
