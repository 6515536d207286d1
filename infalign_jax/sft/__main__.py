"""``python -m infalign_jax.sft`` (see :mod:`infalign_jax.sft.command`)."""

from infalign_jax.cli import run_main
from infalign_jax.sft.command import main

run_main(main)
