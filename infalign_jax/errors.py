"""The package's one user-input error type, importable by the pure core without the CLI shell.

Library code raises :class:`UsageError` (a ``ValueError``) for invalid user input — bad specs, configs,
files — so notebooks see a normal exception; every CLI's :func:`infalign_jax.cli.run_main` turns it into one
``error: <message>`` line on stderr and exit status :data:`EXIT_USAGE`.
"""


class UsageError(ValueError):
    """Invalid user input (spec, config, file). CLIs report it as one line and exit with status 2."""


EXIT_USAGE = 2
