"""infalign_jax: inference-aware alignment (InfAlign / CTRL) for language models in JAX/Flax."""

from pathlib import Path

from setuptools import find_packages, setup


def _requirements(name: str) -> list[str]:
    lines = Path(__file__).with_name(name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


setup(
    name="infalign_jax",
    version="0.1.0",
    description="Inference-aware alignment (calibrate-and-transform RL) for language models in JAX/Flax",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["infalign_jax", "infalign_jax.*"]),
    install_requires=_requirements("requirements.txt"),
    extras_require={
        "test": _requirements("requirements-test.txt"),
        "bench": _requirements("requirements-bench.txt"),
    },
)
