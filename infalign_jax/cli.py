"""Shared command-line plumbing: one clear error and exit code 2 for bad input.

Every CLI in the package wraps its ``main`` with :func:`run_main`. Library code raises :class:`UsageError`
(a ``ValueError``) for invalid user input — bad specs, configs, files — so notebooks see a normal exception
and shells see ``error: <message>`` on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


class UsageError(ValueError):
    """Invalid user input (spec, config, file). CLIs report it as one line and exit with status 2."""


EXIT_USAGE = 2


def _one_line(e: BaseException) -> str:
    """``"<ExceptionType>: <message>"`` on one line."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}".rstrip(": ")


def load_config_file(path: str | Path, *args: str):
    """``get_config(*args)`` of a config file (what ``--config PATH`` loads), for library use and tests.

    Any failure — a missing file, a Python error while importing it or in ``get_config()``, no
    ``get_config``, a result that is not an ``ml_collections.ConfigDict`` — raises one :class:`UsageError`
    naming the file.
    """
    import ml_collections

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    name = f"_config_{path.stem}"
    try:
        loader = importlib.machinery.SourceFileLoader(name, str(path))  # any file name, not just *.py
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
        loader.exec_module(module)
    except Exception as e:
        raise UsageError(f"config file {path} failed to load: {_one_line(e)}") from e
    if not callable(getattr(module, "get_config", None)):
        raise UsageError(f"config file {path} defines no get_config() function")
    try:
        config = module.get_config(*args)
    except Exception as e:
        raise UsageError(f"config file {path}: get_config() failed: {_one_line(e)}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise UsageError(
            f"config file {path}: get_config() must return an ml_collections.ConfigDict, "
            f"got {type(config).__name__}"
        )
    return config


def _config_arg(args: Sequence[str]) -> str | None:
    """The value of the last ``--config FILE`` / ``--config=FILE`` in ``args`` (absl syntax), else None."""
    value = None
    i = 0
    while i < len(args) and args[i] != "--":
        name, eq, rest = args[i].lstrip("-").partition("=")
        if args[i].startswith("-") and name == "config":
            if eq:
                value = rest
            elif i + 1 < len(args):
                value, i = args[i + 1], i + 1
        i += 1
    return value


def parse_config_flags(
    argv: Sequence[str] | None,
    *,
    prog: str,
    example: str,
    define_flags: Callable | None = None,
):
    """Parses ``--config FILE [--config.key=value ...]`` (ml_collections) plus the absl flags that
    ``define_flags(flag_values)`` declares. Returns ``(config, flag_values)``; any problem (missing
    ``--config``, unknown flag or config field, a config file that fails to load, a stray positional
    argument) raises one :class:`UsageError`.
    ``argv`` excludes the program name (``None``: ``sys.argv[1:]``).
    """
    from absl import flags
    from ml_collections import config_flags

    args = [prog, *(sys.argv[1:] if argv is None else argv)]
    config_file = _config_arg(args[1:])
    if config_file:
        # Loaded here first for clear errors: ml_collections lets most config-file exceptions escape raw.
        load_config_file(*config_file.split(":", 1))
    fv = flags.FlagValues()
    if define_flags is not None:
        define_flags(fv)
    try:
        # sys_argv: the --config.x=... overrides are read from these arguments, not the process's sys.argv.
        config_flags.DEFINE_config_file(
            "config", None, "ml_collections config file", flag_values=fv, sys_argv=args
        )
        rest = fv(args)[1:]
        config = fv.config
        if config is not None:
            config.keys()  # a config file that failed to load only raises when touched
    except (AttributeError, KeyError) as e:  # e.g. --config.unknown_field=...
        raise UsageError(f"bad config override {e} (not a field of the config)") from e
    except UsageError:
        raise
    except Exception as e:  # absl / ml_collections raise many kinds (flagfiles, an earlier --config, ...)
        raise UsageError("bad arguments or config: " + " ".join(str(e).split())) from e
    if rest:
        raise UsageError(f"unexpected argument(s): {' '.join(rest)}")
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


def define_distributed_flags(fv) -> None:
    """``--distributed`` (+ ``--coordinator``, ``--num_processes``, ``--process_id`` for manual runs), for
    :func:`parse_config_flags`'s ``define_flags``; :func:`initialize_distributed` acts on them."""
    from absl import flags

    flags.DEFINE_bool(
        "distributed",
        False,
        "Call jax.distributed.initialize() first (auto-detected on TPU pods / SLURM).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "coordinator", None, "host:port of process 0 (manual multi-process runs).", flag_values=fv
    )
    flags.DEFINE_integer("num_processes", None, "Number of processes (manual runs).", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "This process's id (manual runs).", flag_values=fv)


def initialize_distributed(fv) -> None:
    """``jax.distributed.initialize`` when ``--distributed`` was given (with the manual coordinator settings,
    if any); a no-op otherwise. Call it before anything touches the devices."""
    if not fv.distributed:
        return
    import jax

    kwargs = {}
    if fv.coordinator:
        kwargs = dict(
            coordinator_address=fv.coordinator,
            num_processes=fv.num_processes,
            process_id=fv.process_id,
            coordinator_bind_address=fv.coordinator,
        )
    jax.distributed.initialize(**kwargs)
