"""``python -m infalign_jax.analytic``: JSON schema, KL matching, plot/export files, bad input -> exit 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from infalign_jax.analytic.solver import exponential_point, match_kl
from infalign_jax.cli import UsageError
from infalign_jax.commands.analytic import main

KLS = [0.25, 0.5, 1.0]


def _run(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "infalign_jax.analytic", *args],
        cwd=cwd,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )


def identity_tilt_kl(beta):
    mean = 1.0 / (-np.expm1(-1.0 / beta)) - beta
    return mean / beta - np.log(beta * np.expm1(1.0 / beta))


def test_cli_json_plot_and_export(tmp_path, repo_root):
    plot, npz = tmp_path / "figs" / "frontier.png", tmp_path / "phi.npz"
    proc = _run(
        [
            "--procedure",
            "bon:4",
            "--kl",
            "0.25,0.5,1",
            "--json",
            "--plot",
            str(plot),
            "--export-transform",
            str(npz),
        ],
        repo_root,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert set(report) == {"procedure", "points"} and report["procedure"] == "bon:4"
    assert [p["kl"] for p in report["points"]] == KLS
    for p in report["points"]:
        assert set(p) == {"kl", "optimal", "exponential", "identity"}
        assert set(p["optimal"]) == {"win_rate", "beta"} and set(p["identity"]) == {"win_rate", "beta"}
        assert set(p["exponential"]) == {"t", "win_rate", "beta"}
        assert p["optimal"]["win_rate"] >= p["exponential"]["win_rate"] > p["identity"]["win_rate"] > 0.5
        assert p["exponential"]["t"] > 0
        # Every entry is at the requested KL: identity via the closed form, the others recomputed here.
        assert abs(identity_tilt_kl(p["identity"]["beta"]) - p["kl"]) < 1e-3
    expo = exponential_point(
        "bon:4",
        [p["exponential"]["t"] for p in report["points"]],
        [p["exponential"]["beta"] for p in report["points"]],
    )
    np.testing.assert_allclose(expo.kl, KLS, atol=1e-6)
    np.testing.assert_allclose(
        expo.win_rate, [p["exponential"]["win_rate"] for p in report["points"]], atol=1e-9
    )
    opt = match_kl("bon:4", KLS)
    np.testing.assert_allclose(opt.kl, KLS, atol=1e-6)
    np.testing.assert_allclose(opt.win_rate, [p["optimal"]["win_rate"] for p in report["points"]], atol=1e-9)
    np.testing.assert_allclose(opt.beta, [p["optimal"]["beta"] for p in report["points"]], rtol=1e-8)

    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20_000
    with np.load(npz) as z:
        u, phi = z["u"], z["phi"]
        assert str(z["procedure"]) == "bon:4" and float(z["kl"]) == pytest.approx(0.25, abs=1e-6)
        assert float(z["beta"]) == pytest.approx(report["points"][0]["optimal"]["beta"], rel=1e-8)
        assert int(z["grid"]) == 1024
    assert u.shape == phi.shape == (1026,) and u[0] == 0.0 and u[-1] == 1.0 and np.all(np.diff(u) > 0)
    np.testing.assert_allclose(phi[1:-1], opt.phi_c[0], atol=1e-9)
    assert phi[0] == 0.0 and np.all(np.diff(phi) >= -1e-12) and phi[-1] > phi[-2]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--procedure", "bon:0"], "integer in [1, 1000]"),
        (["--procedure", "best:4"], "unknown procedure"),
        (["--kl", "0.5,abc"], "'abc' is not a number"),
        (["--kl", "9"], "in (0, 4]"),
        (["--grid", "8"], "grid must be an integer"),
        (["--grid", "many"], "invalid int value"),
        (["--plot", "out.jpg"], "expected a .png"),
        (["--beta-for-transform", "0.3"], "needs --export-transform"),
        (["--export-transform", "a.npz", "--beta-for-transform", "-1"], "positive number"),
        (["--export-transform", "a.npz", "--beta-for-transform", "1e-12"], "must be in [1e-10, 1e+04]"),
        (["--export-transform", "a.npz", "--beta-for-transform", "1e-9"], "gives KL 12.6 > 4"),  # bon:4
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_raise_one_usage_error(args, fragment):
    with pytest.raises(UsageError) as e:
        main(args)
    assert fragment in str(e.value)


def test_bad_input_exits_2_with_one_line_and_keeps_existing_files(tmp_path, repo_root):
    existing = tmp_path / "phi.npz"
    existing.write_bytes(b"keep me")
    proc = _run(["--procedure", "won:x", "--export-transform", str(existing)], repo_root)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: procedure 'won:x': 'x' is not an integer"]
    (tmp_path / "dir.png").mkdir()
    proc = _run(["--kl", "0.5", "--plot", str(tmp_path / "dir.png"), "--json"], repo_root)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "directory" in proc.stderr
    assert existing.read_bytes() == b"keep me"
    # An output under a FILE is refused before the computation (it was a FileExistsError traceback after it).
    with pytest.raises(UsageError, match="is not a directory"):
        main(["--kl", "0.5", "--export-transform", str(existing / "x.npz")])
    assert existing.read_bytes() == b"keep me"


def test_plot_curves_stop_at_the_grid_reach():
    """won:50 reaches KL 0.4 on 256 cells but not the curves' top budget (1.3 × 0.4; its optimal KL grows
    only ~0.023 per factor 10 in β, and β ≥ 1e-10): the figure's curves stop before it instead of failing
    the run; a requested unreachable budget is still an error."""
    from infalign_jax.analytic.comparison import analyze
    from infalign_jax.analytic.plotting import CURVE_POINTS, frontier_figure

    report, results = analyze("won:50", [0.4], grid=256, with_curves=True)
    curve_kl = results[2].kl[1:]
    assert report["points"][0]["kl"] == 0.4 and 0 < len(curve_kl) < CURVE_POINTS
    assert np.all(np.diff(curve_kl) > 0) and curve_kl[-1] < 0.52
    assert len(frontier_figure("won:50", [0.4], grid=256, results=results).axes) == 2
    with pytest.raises(UsageError, match="won:50: KL budget 0.52"):
        analyze("won:50", [0.52], grid=256)
