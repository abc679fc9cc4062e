"""What the sub-commands share: error handling, config options, shortcut flags, JSON output.

A training command parses ``--config``, ``--set`` and its shortcut flags, hands them to
:func:`grootvl.tasks.load_config` (one schema validates everything, and names the flag or
file a bad value came from) and calls the library; nothing here trains or evaluates.
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

__all__ = ["Flag", "add_config_options", "add_flags", "cli_command", "print_json_result",
           "resolve_config"]


def cli_command(name: str):
    """Decorator for a sub-command's ``func(args) -> int``.

    :class:`UserError` -> ``grootvl NAME: error: MESSAGE`` on stderr and exit status 2, with
    no traceback; Ctrl-C -> status 130. Anything else is a bug and keeps its traceback.
    Also routes library log messages (e.g. skipped images) to stderr.
    """

    def wrap(func):
        @functools.wraps(func)
        def run(args) -> int:
            logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
            try:
                return int(func(args) or 0)
            except UserError as exc:
                print(f"grootvl {name}: error: {exc}", file=sys.stderr)
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


def add_config_options(p: argparse.ArgumentParser, default_config: str) -> None:
    p.add_argument("--config", default=default_config,
                   help="packaged config name or YAML path (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set sched.warmup_epochs=5 (repeatable)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (every key, with its description) and exit")


def resolve_config(args, flags: list[Flag]):
    """The run config: ``--config`` <- ``--set`` <- the shortcut flags given."""
    from ..tasks import load_config

    values = {flag.key: (getattr(args, flag.dest), flag.option) for flag in flags}
    return load_config(args.config, args.overrides, values)


def print_config(cfg) -> None:
    from ..engine.config import dump_config

    print(dump_config(cfg), end="")


def print_json_result(result: dict, json_out: str | os.PathLike | None) -> None:
    """The one-shot commands' output: one compact JSON line on stdout (for pipes), and the
    same result pretty-printed to ``json_out`` when the user passed ``--json``."""
    print(json.dumps(result))
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))


def json_object(text: str) -> dict:
    """argparse type of the JSON-object options (``--backbone-kwargs`` ...)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}); e.g. '{{\"depths\": [2, 2, 4, 2]}}'")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"depths\": [2, 2, 4, 2]}'")
    return value
