"""The import rules of docs/architecture.md, read from the source with ``ast`` (nothing is imported)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "infalign_jax"
CORE = ("analytic", "ctrl", "data", "models", "reward", "sampling")
SHELLS = (
    "infalign_jax.cli",
    "infalign_jax.commands",
    "infalign_jax.train",
    "infalign_jax.train_rm",
    "infalign_jax.tokenizer_train",
    "infalign_jax.calibrate",
    "infalign_jax.sample",
    "infalign_jax.main",
    "infalign_jax.sft.command",
)


def imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute module names ``path`` imports (``from a import b`` gives ``a`` and ``a.b``). With
    ``top_level_only``, imports under ``if __name__ == "__main__":`` are left out."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    if top_level_only:
        for node in tree.body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                skip |= {id(n) for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _is_shell(module: str) -> bool:
    return any(module == s or module.startswith(s + ".") for s in SHELLS)


@pytest.mark.parametrize("package", CORE)
def test_core_never_imports_the_shell(package):
    """An entry point inside a core package (``data/hh.py``, ``analytic/__main__.py``) hands over to its shell
    only under ``if __name__ == "__main__":``, so importing the package never imports the shell."""
    offenders = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        if bad := sorted(m for m in imported_modules(path, top_level_only=True) if _is_shell(m)):
            offenders[str(path.relative_to(PACKAGE))] = bad
    assert offenders == {}


def test_harness_never_imports_a_trainer_or_the_shell():
    for path in sorted((PACKAGE / "harness").rglob("*.py")):
        bad = sorted(m for m in imported_modules(path) if _is_shell(m) or m.startswith("infalign_jax.sft"))
        assert bad == [], path


def test_one_make_optimizer_and_one_checkpointer():
    defs = {"make_optimizer": [], "CheckpointManager": []}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if "def make_optimizer(" in text:
            defs["make_optimizer"].append(path.relative_to(PACKAGE).as_posix())
        if "CheckpointManager(" in text:
            defs["CheckpointManager"].append(path.relative_to(PACKAGE).as_posix())
    assert defs == {
        "make_optimizer": ["harness/optimizer.py"],
        "CheckpointManager": ["harness/checkpoint.py"],
    }


def test_imported_modules_by_hand(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "import os\nfrom infalign_jax.errors import UsageError\nfrom . import x\n"
        "if __name__ == '__main__':\n    from infalign_jax.cli import run_main\n"
    )
    assert imported_modules(src) == {"os", "infalign_jax.errors", "infalign_jax.errors.UsageError",
                                     "infalign_jax.cli", "infalign_jax.cli.run_main"}  # fmt: skip
    assert imported_modules(src, top_level_only=True) == {
        "os",
        "infalign_jax.errors",
        "infalign_jax.errors.UsageError",
    }
