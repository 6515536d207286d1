"""Entry point: ``python -m infalign_jax.analytic`` (see :mod:`infalign_jax.analytic.command`)."""

from infalign_jax.analytic.command import main
from infalign_jax.cli import run_main

if __name__ == "__main__":
    run_main(main)
