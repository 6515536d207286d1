"""Executes the notebooks top to bottom with the interpreter running the tests (a temporary kernel spec;
nothing is registered globally), from the repository root. Each cell must run without error and render its
figure; for the quickstart a probe cell appended to the executed copy reports the notebook's results, which
are checked against hand-computed values. The quickstart is committed with its outputs (checked too)."""

import json
import sys

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

NOTEBOOKS = ["notebooks/analytic_solver.ipynb", "notebooks/quickstart.ipynb"]
SAVED_WITH_OUTPUTS = ["notebooks/quickstart.ipynb"]
# Appended to the executed (in-memory) copy: prints what the notebook computed, as one JSON line.
PROBES = {
    "notebooks/quickstart.ipynb": """
import json
tokens_bnl, mask_bnl = sel.candidates.tokens, sel.candidates.mask
print(json.dumps({
    "u_ps": np.asarray(u_ps).tolist(),
    "phi": {k: np.asarray(v).tolist() for k, v in phi.items()},
    "before": before, "after": {k: after[k] for k in ("kl", "win_rate")}, "optimum": after["optimum"],
    "steps": int(state.step),
    "rewards": sel.rewards.tolist(), "index": sel.index.tolist(), "reward": sel.reward.tolist(),
    "tokens_bnl": np.asarray(tokens_bnl).tolist(), "mask_bnl": np.asarray(mask_bnl).tolist(),
    "chosen_tokens": np.asarray(sel.tokens).tolist(),
}))
""",
}


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernel spec running ``sys.executable -m ipykernel_launcher`` (this venv), found via JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "infalign-test"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "infalign", "language": "python"})
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        yield "infalign-test"


@pytest.fixture(scope="module")
def executed(repo_root, kernel_name):
    """path -> (executed notebook, the probe's JSON result or None); each notebook runs once."""
    cache = {}

    def run(path):
        if path not in cache:
            nb = nbformat.read(repo_root / path, as_version=4)
            probe = PROBES.get(path)
            if probe:
                nb.cells.append(nbformat.v4.new_code_cell(probe))
            client = NotebookClient(
                nb, kernel_name=kernel_name, timeout=300, resources={"metadata": {"path": str(repo_root)}}
            )
            client.execute()
            result = None
            if probe:
                text = "".join(o.get("text", "") for o in nb.cells.pop().outputs if o.output_type == "stream")
                result = json.loads(text.strip().splitlines()[-1])
            cache[path] = nb, result
        return cache[path]

    return run


def _code_outputs(nb):
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_executes(path, executed):
    nb, _ = executed(path)
    outputs = _code_outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the figure was rendered


@pytest.mark.parametrize("path", SAVED_WITH_OUTPUTS)
def test_notebook_is_saved_with_outputs(path, repo_root):
    """What a reader sees on the repository page: every code cell has its outputs, none is an error."""
    nb = nbformat.read(repo_root / path, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells and all(c.get("outputs") for c in code_cells[1:])  # cell 0 only imports
    assert all(o.get("output_type") != "error" for o in _code_outputs(nb))
    assert any("image/png" in o.get("data", {}) for o in _code_outputs(nb))


@pytest.fixture(scope="module")
def quickstart(executed):
    return executed("notebooks/quickstart.ipynb")[1]


def test_quickstart_calibration_and_transforms(quickstart):
    # u = (#less + ½ #equal) / K by hand: rewards [[0.1, 0.5, 2.0], [-1, 0.3, 0.3]] against the sorted
    # references [[0, 0.5, 1, 1.5], [-2, 0.3, 0.3, 5]].
    u = np.array([[1, 1.5, 4], [1, 2, 2]]) / 4
    np.testing.assert_array_equal(quickstart["u_ps"], u)
    phi = quickstart["phi"]
    np.testing.assert_array_equal(phi["identity"], u)
    for t in (8.0, -5.0):
        np.testing.assert_allclose(phi[f"exp:{t:g}"], np.expm1(t * u) / np.expm1(t), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(phi["log"], np.log((4 * u + 1) / 5), rtol=1e-6)  # floor log(1/(K+1))


def test_quickstart_bandit_moves_towards_the_optimum(quickstart):
    """π_ref has KL 0 and every win rate ½; 100 CTRL steps with exp:8 raise KL and the best-of-4 win rate
    to the exact optimum of the same objective (about KL 0.29, win rate 0.81), within sampling noise."""
    before, after, optimum = quickstart["before"], quickstart["after"], quickstart["optimum"]
    assert quickstart["steps"] == 100
    assert abs(before["kl"]) < 1e-9 and abs(before["win_rate"]["bon:4"] - 0.5) < 1e-9
    assert 0.25 < optimum["kl"] < 0.33 and optimum["win_rate"]["bon:4"] > 0.78
    assert abs(after["kl"] - optimum["kl"]) < 0.03
    assert abs(after["win_rate"]["bon:4"] - optimum["win_rate"]["bon:4"]) < 0.02


def test_quickstart_best_of_n_keeps_the_highest_reward(quickstart):
    q = quickstart
    tokens_bnl, mask_bnl = np.asarray(q["tokens_bnl"]), np.asarray(q["mask_bnl"], bool)
    assert tokens_bnl.shape[:2] == (2, 8)
    want = ((tokens_bnl % 2 == 0) & mask_bnl).sum(-1) / np.maximum(mask_bnl.sum(-1), 1)  # the toy reward
    np.testing.assert_allclose(q["rewards"], want, rtol=1e-6)
    np.testing.assert_array_equal(q["index"], np.argmax(want, axis=1))
    np.testing.assert_array_equal(q["reward"], np.max(q["rewards"], axis=1))
    np.testing.assert_array_equal(q["chosen_tokens"], tokens_bnl[[0, 1], q["index"]])
