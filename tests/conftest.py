"""Test setup: 8 fake CPU devices (for sharding tests) and a persistent compilation cache.

Must run before jax is imported anywhere, which pytest guarantees for the root conftest.
"""

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]

_FLAGS = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = (_FLAGS + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_ROOT / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = _ROOT


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def hh_dir() -> Path:
    """The HH-RLHF input the library itself would use: ``$INFALIGN_HH_DIR`` if set, else the packaged copy."""
    from infalign_jax.data.hh import resolve_manual_dir

    path = resolve_manual_dir()
    if not (path / "harmless-base" / "test.jsonl.gz").is_file():
        source = "INFALIGN_HH_DIR" if os.environ.get("INFALIGN_HH_DIR") else "the packaged copy"
        pytest.fail(f"HH-RLHF data not found: {path} ({source}) has no harmless-base/test.jsonl.gz")
    return path


def pytest_report_header(config):
    return f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}"
