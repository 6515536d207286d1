"""Shared command-line plumbing: one clear error and exit code 2 for bad input.

Every CLI in the package wraps its ``main`` with :func:`run_main`. Library code raises :class:`UsageError`
(a ``ValueError``) for invalid user input — bad specs, configs, files — so notebooks see a normal exception
and shells see ``error: <message>`` on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


class UsageError(ValueError):
    """Invalid user input (spec, config, file). CLIs report it as one line and exit with status 2."""


EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose errors raise :class:`UsageError` (so :func:`run_main` prints one line, exit 2)."""

    def error(self, message):
        raise UsageError(message)


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Runs ``main(argv)`` and exits; a :class:`UsageError` becomes ``error: ...`` on stderr and exit 2."""
    try:
        code = main(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.exit(code or 0)
