"""``python -m infalign_jax.evaluate``: see :mod:`infalign_jax.evaluate.command`."""

from infalign_jax.cli import run_main
from infalign_jax.evaluate.command import main

if __name__ == "__main__":
    run_main(main)
