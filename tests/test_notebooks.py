"""Executes the notebooks top to bottom with the interpreter running the tests (a temporary kernel spec;
nothing is registered globally). Each cell must run without error."""

import json
import sys

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = ["notebooks/analytic_solver.ipynb"]


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    """A kernel spec running ``sys.executable -m ipykernel_launcher`` (this venv), found via JUPYTER_PATH."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "infalign-test"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "infalign", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "infalign-test"


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_executes(path, repo_root, kernel_name):
    nb = nbformat.read(repo_root / path, as_version=4)
    client = NotebookClient(
        nb, kernel_name=kernel_name, timeout=300, resources={"metadata": {"path": str(repo_root)}}
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the figure was rendered
