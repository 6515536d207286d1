"""The README's Python quickstart runs as printed and computes what its comments say."""

import re

import numpy as np

from infalign_jax.analytic.transforms import exponential_transform


def _quickstart(repo_root) -> str:
    text = (repo_root / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_quickstart_runs_and_matches_its_comments(repo_root):
    code = _quickstart(repo_root)
    assert len(code.splitlines()) <= 16  # a quickstart, not a program
    ns: dict = {}
    exec(compile(code, "README.md:quickstart", "exec"), ns)
    # u = (#{r_k < r} + ½ #{r_k = r}) / K, counted by hand against the reference rows.
    np.testing.assert_array_equal(np.asarray(ns["u_ps"]), [[0.5, 1.0, 0.25], [0.375, 0.375, 0.75]])
    best = ns["best"]
    assert round(float(best.t), 2) == -7.92 and round(float(best.beta), 4) == 0.0752
    assert abs(float(best.kl) - 0.3) < 1e-6
    expected = exponential_transform(np.asarray(ns["u_ps"], np.float64), round(float(best.t), 3))
    np.testing.assert_allclose(np.asarray(ns["phi_ps"]), expected, rtol=2e-6)
