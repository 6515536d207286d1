"""The command-line shells of entry points whose library lives in a core package.

``python -m infalign_jax.data.hh`` and ``python -m infalign_jax.analytic`` keep their names; their
``__main__`` code imports the shell from here only when run, so importing the core packages
(:mod:`infalign_jax.data`, :mod:`infalign_jax.analytic`) never imports :mod:`infalign_jax.cli`. Each shell
parses arguments, calls the library and prints; its :func:`run` is ``main`` under
:func:`infalign_jax.cli.run_main` (bad input: one ``error:`` line, exit 2).

- :mod:`~infalign_jax.commands.hh_data`: the HH-RLHF TFDS build (:mod:`infalign_jax.data.hh_dataset`).
- :mod:`~infalign_jax.commands.analytic`: the analytic solver's comparison table
  (:mod:`infalign_jax.analytic.comparison`).
- :mod:`~infalign_jax.commands.compilation_cache`: the persistent XLA compilation cache of a CLI process.
"""
