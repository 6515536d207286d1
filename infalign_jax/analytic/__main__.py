"""Entry point: ``python -m infalign_jax.analytic`` (the shell is :mod:`infalign_jax.commands.analytic`)."""

if __name__ == "__main__":
    from infalign_jax.commands.analytic import run

    run()
