"""Shared command-line plumbing: one clear error and exit code 2 for bad input.

Every CLI in the package wraps its ``main`` with :func:`run_main`. Library code raises :class:`UsageError`
(a ``ValueError``) for invalid user input — bad specs, configs, files — so notebooks see a normal exception
and shells see ``error: <message>`` on stderr with exit status 2.

Config-driven CLIs (:func:`parse_config_flags`) answer ``-h`` / ``--help`` with their flags and every field of
the config (:mod:`infalign_jax.config_docs`: name, default, the description from the config file's comments),
without loading data or models. Training CLIs end with :func:`run_summary` on stdout: the numbers a user looks
for and where the outputs are, or ``already complete: ...`` when a rerun found the work done.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from infalign_jax.errors import EXIT_USAGE, UsageError  # noqa: F401  (re-exported)


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


HELP_FLAGS = ("-h", "--help", "--helpfull", "--helpshort")
_REPO_ROOT = Path(__file__).resolve().parents[1]


def help_requested(args: Sequence[str]) -> bool:
    """True if ``args`` (before a ``--``) hold one of :data:`HELP_FLAGS`."""
    for arg in args:
        if arg == "--":
            return False
        if arg in HELP_FLAGS:
            return True
    return False


def default_config_path(example: str) -> Path:
    """A CLI's default config (``example``, e.g. ``configs/ctrl_bandit.py``): in the checkout this package
    lives in if it is there, else relative to the working directory."""
    in_repo = _REPO_ROOT / example
    return in_repo if in_repo.is_file() else Path(example)


_FLAG_METAVARS = {"string": "VALUE", "int": "INT", "float": "FLOAT"}


def _flag_lines(fv) -> list[tuple[str, str]]:
    """``(--name VALUE, help (default: ...))`` per absl flag of ``fv``, in definition order."""
    seen, rows = set(), []
    for name in fv:
        flag = fv[name]
        if id(flag) in seen:
            continue
        seen.add(id(flag))
        kind = flag.flag_type()
        metavar = _FLAG_METAVARS.get(kind, "VALUE")
        spec = f"--[no]{flag.name}" if kind == "bool" else f"--{flag.name} {metavar}"
        default = f" (default: {flag.default!r})" if flag.default is not None else ""
        rows.append((spec, f"{flag.help}{default}"))
    return rows


def config_help(
    args: Sequence[str],
    *,
    prog: str,
    example: str,
    define_flags: Callable | None = None,
    description: str = "",
) -> str:
    """The ``--help`` text of a :func:`parse_config_flags` CLI: usage, ``description``, its flags, and every
    field of the config named by ``--config`` in ``args`` (else the CLI's default config ``example``) with its
    default and description (:mod:`infalign_jax.config_docs`). Reads only the config file."""
    from absl import flags

    from infalign_jax.config_docs import config_file_docs, format_fields

    fv = flags.FlagValues()
    if define_flags is not None:
        define_flags(fv)
    rows = [
        ("--config FILE", f"the ml_collections config file (required), e.g. {example}"),
        ("--config.NAME=VALUE", "override one field of the config (the fields are listed below)"),
        *_flag_lines(fv),
        ("-h, --help", "show this help and exit"),
    ]
    width = max(len(spec) for spec, _ in rows)
    lines = [f"usage: {prog} --config FILE [--config.NAME=VALUE ...] [flags]", ""]
    if description:
        lines += [inspect.cleandoc(description), ""]
    lines += ["flags:", *(f"  {spec:<{width}}  {text}" for spec, text in rows), ""]
    spec = _config_arg(args) or str(default_config_path(example))
    path, *config_args = spec.split(":", 1)
    if config_args or Path(path).is_file():
        lines += [f"config fields of {spec} (name = default, then its description):", ""]
        lines.append(format_fields(config_file_docs(path, *config_args)))
    else:
        lines.append(f"(no config file at {path}: pass --config FILE --help to list a config's fields)")
    return "\n".join(lines)


def parse_config_flags(
    argv: Sequence[str] | None,
    *,
    prog: str,
    example: str,
    define_flags: Callable | None = None,
    description: str = "",
):
    """Parses ``--config FILE [--config.key=value ...]`` (ml_collections) plus the absl flags that
    ``define_flags(flag_values)`` declares. Returns ``(config, flag_values)``; any problem (missing
    ``--config``, unknown flag or config field, a config file that fails to load, a stray positional
    argument) raises one :class:`UsageError`. ``-h`` / ``--help`` prints :func:`config_help` (with
    ``description``, e.g. the CLI module's docstring) and exits with status 0.
    ``argv`` excludes the program name (``None``: ``sys.argv[1:]``).
    """
    from absl import flags
    from ml_collections import config_flags

    args = [prog, *(sys.argv[1:] if argv is None else argv)]
    if help_requested(args[1:]):
        text = config_help(
            args[1:], prog=prog, example=example, define_flags=define_flags, description=description
        )
        print(text, flush=True)
        raise SystemExit(0)
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


def run_summary(
    title: str,
    rows: Sequence[tuple[str, str]] = (),
    outputs: str | Path | None = None,
    *,
    lines: Sequence[str] = (),
    already_complete: bool = False,
) -> str:
    """The short human summary a training CLI prints last on stdout (its JSON files hold everything):
    ``title``, the numbers a user looks for as aligned ``name  value`` ``rows`` (and any preformatted
    ``lines``, e.g. a table), and where the outputs are. A rerun that found the work done and redid nothing
    (``already_complete``) starts with one line ``already complete: <title>; outputs in <outputs>``."""
    width = max((len(name) for name, _ in rows), default=0)
    head = f"already complete: {title}; outputs in {outputs}" if already_complete else title
    body = [f"  {name:<{width}}  {value}" for name, value in rows] + [f"  {line}" for line in lines]
    tail = [f"  outputs: {outputs}"] if outputs is not None and not already_complete else []
    return "\n".join([head, *body, *tail])


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Runs ``main(argv)`` and exits; a :class:`UsageError` becomes ``error: ...`` on stderr and exit 2.

    Libraries' absl WARNING records (Orbax: ``WARNING:absl:Metadata file does not exist: ...``) are silenced:
    they printed around clean refusals, and the CLIs report what matters as their own ``warning:`` lines."""
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
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
