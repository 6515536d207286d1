"""Calibration, transforms and the offline calibration table (hand-computed values)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from infalign_jax.analytic.transforms import exponential_transform
from infalign_jax.cli import UsageError
from infalign_jax.ctrl.calibration import calibrate, calibrate_checked, reference_median, sort_reference
from infalign_jax.ctrl.table import CalibrationTableWriter, load_table
from infalign_jax.ctrl.transforms import check_transform_for_procedure, parse_transform

METHODS = ["broadcast", "searchsorted", "auto"]


@pytest.mark.parametrize("method", METHODS)
def test_calibrate_hand_computed_with_ties(method):
    ref = jnp.array([[1.0, 2.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    r = jnp.array([[2.0, 0.5, 3.5], [0.0, -1.0, 1.0]])
    u = calibrate(r, ref, method)
    # row 0: r=2 → (1 less + ½·2 equal)/4 = 0.5; r=0.5 → 0; r=3.5 → 1. Row 1 (all equal): ½, 0, 1.
    np.testing.assert_array_equal(np.asarray(u), [[0.5, 0.0, 1.0], [0.5, 0.0, 1.0]])


@pytest.mark.parametrize("method", METHODS)
def test_calibrate_k1(method):
    u = calibrate(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[2.0]]), method)
    np.testing.assert_array_equal(np.asarray(u), [[0.0, 0.5, 1.0]])


def test_methods_agree_on_random_and_ties():
    rng = np.random.default_rng(0)
    ref = sort_reference(jnp.asarray(rng.integers(0, 5, (6, 64)), jnp.float32))
    r = jnp.asarray(rng.integers(0, 6, (6, 33)), jnp.float32)
    a, b = calibrate(r, ref, "broadcast"), calibrate(r, ref, "searchsorted")
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    expect = (
        (ref[:, None, :] < r[:, :, None]).sum(-1) + 0.5 * (ref[:, None, :] == r[:, :, None]).sum(-1)
    ) / 64
    np.testing.assert_allclose(np.asarray(a), np.asarray(expect), atol=0)


@pytest.mark.parametrize("method", ["searchsorted", "broadcast"])
def test_calibrate_checked_sorts_and_rejects_nan(method):
    # searchsorted needs the reference sorted (broadcast counts in any order): an unsorted [3, 1, 2] would
    # give [[1, 0, 1]] there if calibrate_checked stopped sorting (mutation review, 2026-11-27).
    u = calibrate_checked(np.array([[2.5, 0.5, 3.5]]), np.array([[3.0, 1.0, 2.0]]), method)
    np.testing.assert_allclose(np.asarray(u), [[2 / 3, 0.0, 1.0]])
    with pytest.raises(UsageError, match="policy rewards.*non-finite"):
        calibrate_checked(np.array([[np.nan]]), np.array([[1.0]]))
    with pytest.raises(UsageError, match="reference rewards.*non-finite"):
        calibrate_checked(np.array([[0.0]]), np.array([[1.0, np.inf]]))


def test_bad_shapes_and_method():
    with pytest.raises(UsageError, match="same P"):
        calibrate(jnp.zeros((2, 3)), jnp.zeros((3, 4)))
    with pytest.raises(UsageError, match="unknown calibration method"):
        calibrate(jnp.zeros((2, 3)), jnp.zeros((2, 4)), "magic")


def test_reference_median():
    np.testing.assert_allclose(
        np.asarray(reference_median(jnp.array([[1.0, 2.0, 4.0], [1.0, 2.0, 3.0]]))), [2.0, 2.0]
    )
    np.testing.assert_allclose(np.asarray(reference_median(jnp.array([[1.0, 2.0, 4.0, 8.0]]))), [3.0])


def test_transforms_values(tmp_path):
    u = jnp.array([[0.0, 0.25, 1.0]])
    r = jnp.array([[-1.0, 0.0, 3.0]])
    ref = jnp.array([[-2.0, 0.0, 1.0, 5.0]])  # K = 4, median 0.5
    np.testing.assert_allclose(np.asarray(parse_transform("identity")(u, r, ref)), u)
    # log((K u + 1)/(K + 1)) with K = 4: log(1/5), log(2/5), log(1)
    np.testing.assert_allclose(
        np.asarray(parse_transform("log")(u, r, ref)), np.log([[0.2, 0.4, 1.0]]), rtol=1e-6
    )
    for t in (8.0, -5.0):
        got = parse_transform(f"exp:{t:g}")(u, r, ref)
        np.testing.assert_allclose(np.asarray(got), np.asarray(exponential_transform(u, t)), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(got)[0, 1], (np.exp(t / 4) - 1) / (np.exp(t) - 1), rtol=1e-5)
    lsc = parse_transform("lsc")(u, r, ref)
    np.testing.assert_allclose(np.asarray(lsc), np.log(1 / (1 + np.exp(-(np.asarray(r) - 0.5)))), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(parse_transform("raw")(u, r, ref)), r)
    path = tmp_path / "phi.npz"
    np.savez(path, u=np.array([0.0, 0.5, 1.0]), phi=np.array([0.0, 0.2, 1.0]), procedure="bon:4", beta=0.1)
    tab = parse_transform(f"table:{path}")
    np.testing.assert_allclose(np.asarray(tab(u, r, ref)), [[0.0, 0.1, 1.0]], rtol=1e-6)
    assert tab.uses_u and not parse_transform("lsc").uses_u


@pytest.mark.parametrize(
    "spec", ["", "exp", "exp:x", "exp:0", "exp:nan", "id", "log:3", "table:/nonexistent.npz", "softmax:2"]
)
def test_bad_transform_specs(spec):
    with pytest.raises(UsageError):
        parse_transform(spec)


def test_table_points_that_collide_in_float32_are_merged(tmp_path):
    """1 − 1e-10 and 1 are one float32 number: the table keeps the first of them (strictly increasing u)."""
    path = tmp_path / "fine.npz"
    np.savez(path, u=np.array([0.0, 0.5, 1.0 - 1e-10, 1.0]), phi=np.array([0.0, 0.2, 0.9, 1.0]))
    tab = parse_transform(f"table:{path}")
    assert tab.table_u.tolist() == [0.0, 0.5, 1.0 - 1e-10] and tab.table_phi.tolist() == [0.0, 0.2, 0.9]
    assert np.all(np.diff(np.asarray(tab.table_u, np.float32)) > 0)


def test_bad_table_contents(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, u=np.array([0.0, 0.7, 0.5]), phi=np.array([0.0, 0.2, 1.0]))
    with pytest.raises(UsageError, match="increasing"):
        parse_transform(f"table:{path}")
    npy = tmp_path / "phi.npy"  # a bare array, not an npz with u and phi
    np.save(npy, np.array([0.0, 0.2, 1.0]))
    with pytest.raises(UsageError, match="not an npz with arrays 'u' and 'phi'"):
        parse_transform(f"table:{npy}")


def test_sign_check_against_procedure():
    check_transform_for_procedure(parse_transform("exp:8"), "bon:4")
    check_transform_for_procedure(parse_transform("exp:-8"), "won:4")
    check_transform_for_procedure(parse_transform("identity"), "bon:4")
    with pytest.raises(UsageError, match="best-of-N"):
        check_transform_for_procedure(parse_transform("exp:-2"), "bon:4")
    with pytest.raises(UsageError, match="worst-of-N"):
        check_transform_for_procedure(parse_transform("exp:2"), "won:4")


def test_table_writer_resumes_and_rejects_nan(tmp_path):
    path = tmp_path / "table"
    w = CalibrationTableWriter(path, k=3, meta={"reward": "test"}, shard_size=2)
    w.add([5, 1], [[3.0, 1.0, 2.0], [0.0, 0.0, -1.0]])  # flushes a shard (2 rows)
    w.add([7], [[1.0, 1.0, 1.0]])  # buffered only: lost if the process dies now
    with pytest.raises(UsageError, match="non-finite.*prompt id 9"):
        w.add([8, 9], [[1.0, 2.0, 3.0], [1.0, np.nan, 3.0]])
    assert w.done_ids() == {1, 5, 7}
    del w  # simulated crash: row 7 was never flushed
    w2 = CalibrationTableWriter(path, k=3)
    assert w2.done_ids() == {1, 5}
    with pytest.raises(UsageError, match="duplicate"):
        w2.add([5], [[0.0, 0.0, 0.0]])
    w2.add([7, 2], [[1.0, 1.0, 1.0], [9.0, 8.0, 7.0]])
    w2.close()
    table = load_table(path)
    assert table.k == 3 and table.meta["reward"] == "test" and table.meta["num_prompts"] == 4
    np.testing.assert_array_equal(
        table.lookup([2, 5, 1]), [[7.0, 8.0, 9.0], [1.0, 2.0, 3.0], [-1.0, 0.0, 0.0]]
    )
    with pytest.raises(UsageError, match="not in calibration table"):
        table.lookup([3])
    with pytest.raises(UsageError, match="cannot resume with K=4"):
        CalibrationTableWriter(path, k=4)
    assert json.loads((path / "meta.json").read_text())["format"] == "infalign_jax.calibration_table"


def test_table_errors_are_usage_errors(tmp_path):
    """A path that is a file, a damaged meta.json or shard, and a lookup in an empty table: one UsageError."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        CalibrationTableWriter(afile, k=2)
    empty = tmp_path / "empty"
    CalibrationTableWriter(empty, k=2).close()
    with pytest.raises(UsageError, match="the table is empty"):
        load_table(empty).lookup([0])
    w = CalibrationTableWriter(tmp_path / "t", k=2, shard_size=1)
    w.add([1], [[0.0, 1.0]])
    w.close()
    shard = json.loads((tmp_path / "t" / "meta.json").read_text())["shards"][0]
    (tmp_path / "t" / shard).write_bytes(b"not an npz")
    with pytest.raises(UsageError, match="missing or damaged"):
        load_table(tmp_path / "t")
    with pytest.raises(UsageError, match="missing or damaged"):
        CalibrationTableWriter(tmp_path / "t", k=2)
    (tmp_path / "t" / "meta.json").write_text('{"format": ')
    with pytest.raises(UsageError, match="not JSON"):
        load_table(tmp_path / "t")
