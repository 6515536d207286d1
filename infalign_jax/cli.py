"""Shared command-line plumbing: one clear error and exit code 2 for bad input.

Every CLI in the package wraps its ``main`` with :func:`run_main`. Library code raises :class:`UsageError`
(a ``ValueError``) for invalid user input — bad specs, configs, files — so notebooks see a normal exception
and shells see ``error: <message>`` on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


class UsageError(ValueError):
    """Invalid user input (spec, config, file). CLIs report it as one line and exit with status 2."""


EXIT_USAGE = 2


def load_config_file(path: str | Path):
    """``get_config()`` of a config file (what ``--config PATH`` loads), for library use and tests."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def parse_config_flags(
    argv: Sequence[str] | None,
    *,
    prog: str,
    example: str,
    define_flags: Callable | None = None,
):
    """Parses ``--config FILE [--config.key=value ...]`` (ml_collections) plus the absl flags that
    ``define_flags(flag_values)`` declares. Returns ``(config, flag_values)``; any problem (missing
    ``--config``, unknown flag or config field, a config file that fails to load) raises one
    :class:`UsageError`.
    ``argv`` excludes the program name (``None``: ``sys.argv[1:]``).
    """
    from absl import flags
    from ml_collections import config_flags

    args = [prog, *(sys.argv[1:] if argv is None else argv)]
    fv = flags.FlagValues()
    # sys_argv: the --config.x=... overrides are read from these arguments, not from the process's sys.argv.
    config_flags.DEFINE_config_file(
        "config", None, "ml_collections config file", flag_values=fv, sys_argv=args
    )
    if define_flags is not None:
        define_flags(fv)
    try:
        fv(args)
        config = fv.config
        if config is not None:
            config.keys()  # a config file that failed to load only raises when touched
    except (flags.Error, OSError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise UsageError("bad arguments or config: " + " ".join(str(e).split())) from e
    if config is None:
        raise UsageError(f"--config is required (e.g. --config {example})")
    return config, fv


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
