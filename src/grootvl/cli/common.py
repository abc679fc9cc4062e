"""What the sub-commands share: error handling, validated options, shortcut flags, output
files.

Every command's options are checked before it runs, by the same pydantic machinery
(``grootvl.engine.config``): a training command's ``--config``, ``--set`` and shortcut flags
build the run config (:func:`grootvl.tasks.load_config`, one schema for every setting); the
other commands declare a small options schema (:func:`options_validator`). Either way the
parser's ``validate`` hook runs first (``grootvl.cli.main``) and a bad value is one line
naming the option, the value, what is allowed and where it came from. Nothing here trains
or evaluates.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

__all__ = ["Flag", "add_config_options", "add_flags", "cli_command", "config_validator",
           "error_line", "input_file", "options_validator", "output_file", "output_folder",
           "print_json_result", "resolve_config"]


def error_line(exc: BaseException) -> str:
    """A user error's message as the one line the command prints (any line breaks a
    library put into it become spaces)."""
    return " ".join(str(exc).split())


def cli_command(name: str):
    """Decorator for a sub-command's ``func(args) -> int``.

    Runs the parser's ``validate`` hook first, if it set one (:func:`options_validator`,
    :func:`config_validator`). :class:`UserError` -> ``grootvl NAME: error: MESSAGE`` (one
    line) on stderr and exit status 2, with no traceback; Ctrl-C -> status 130. Anything else
    is a bug and keeps its traceback. Also routes library log messages (e.g. skipped images)
    to stderr.
    """

    def wrap(func):
        @functools.wraps(func)
        def run(args) -> int:
            logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
            try:
                validate = getattr(args, "validate", None)
                if validate is not None:
                    validate(args)
                return int(func(args) or 0)
            except UserError as exc:
                print(f"grootvl {name}: error: {error_line(exc)}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(f"grootvl {name}: interrupted", file=sys.stderr)
                return 130

        return run

    return wrap


@dataclass(frozen=True)
class Flag:
    """A command-line shortcut for one config key (``--batch-size`` -> ``train.batch_size``)."""

    option: str
    key: str
    help: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # argparse: type, nargs, action...

    @property
    def dest(self) -> str:
        return self.option.lstrip("-").replace("-", "_")


def add_flags(group, flags: list[Flag]) -> None:
    for flag in flags:
        options = {"default": None, **flag.options}
        help_text = f"{flag.help} ({flag.key})" if flag.help else flag.key
        group.add_argument(flag.option, dest=flag.dest, help=help_text, **options)


def options_validator(schema: str, flags: dict[str, str]):
    """A parser's ``validate`` hook: check the parsed options ``flags`` names (``{argparse
    dest: option}``, the dest being the schema's field) with ``schema``, the name of a
    :class:`~grootvl.engine.config.ConfigSection` in :mod:`grootvl.cli.options` (imported
    when the command runs), and put the checked values back."""
    def validate(args) -> None:
        from ..engine.config import validate_values
        from . import options

        checked = validate_values(getattr(options, schema),
                                  {dest: (getattr(args, dest), option)
                                   for dest, option in flags.items()})
        for dest in flags:
            setattr(args, dest, getattr(checked, dest))

    return validate


def config_validator(flags: list[Flag]):
    """A training command's ``validate`` hook: ``args.run_config`` = the run config of
    ``--config``, ``--set`` and the shortcut ``flags``."""
    def validate(args) -> None:
        args.run_config = resolve_config(args, flags)

    return validate


def add_config_options(p: argparse.ArgumentParser, default_config: str) -> None:
    p.add_argument("--config", default=default_config,
                   help="packaged config name or YAML path (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set sched.warmup_epochs=5 (repeatable)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (every key, with its description) and exit")


def resolve_config(args, flags: list[Flag]):
    """The run config: ``--config`` <- ``--set`` <- the shortcut flags given (a command
    without ``--config`` / ``--set`` starts from the schema's defaults)."""
    from ..tasks import load_config

    values = {flag.key: (getattr(args, flag.dest), flag.option) for flag in flags}
    return load_config(getattr(args, "config", None), getattr(args, "overrides", ()), values)


def print_config(cfg) -> None:
    from ..engine.config import dump_config

    print(dump_config(cfg), end="")


def print_json_result(result, json_out: str | os.PathLike | None, flag: str = "--json") -> None:
    """The one-shot commands' output: one compact JSON line on stdout (for pipes), and the
    same result pretty-printed to ``json_out`` when the user passed ``--json``."""
    print(json.dumps(result))
    if json_out:
        write_text_file(json.dumps(result, indent=2), json_out, flag)


def _oserror(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def output_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as a file the command may write: not a folder, its folder created."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; pass the path of a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {path}: its folder cannot be created ({_oserror(exc)})") from None
    return path


def write_text_file(text: str, path: str | os.PathLike, flag: str) -> Path:
    """Write ``text`` to the file ``flag`` names (see :func:`output_file`)."""
    path = output_file(path, flag)
    try:
        path.write_text(text)
    except OSError as exc:
        raise UserError(f"{flag} {path} cannot be written ({_oserror(exc)})") from None
    return path


def output_folder(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as a folder the command may write into, created if missing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; pass a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {path}: the folder cannot be created ({_oserror(exc)})") from None
    return path


def input_file(path: str | os.PathLike, flag: str, what: str) -> Path:
    """``path`` as an existing file to read (``what`` says which kind, for the message)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{flag} {path}: no such file; pass {what}")
    if not path.is_file():
        raise UserError(f"{flag} {path} is a folder; pass {what}")
    return path


def json_object(text: str) -> dict:
    """argparse type of the JSON-object options (``--backbone-kwargs`` ...)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}); e.g. '{{\"depths\": [2, 2, 4, 2]}}'")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"depths\": [2, 2, 4, 2]}'")
    return value
