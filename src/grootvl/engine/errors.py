"""The exception that means "the user asked for something impossible", and its CLI handling."""
from __future__ import annotations

import functools
import logging
import sys


class UserError(Exception):
    """A problem with the command line, the config or the data, not a bug.

    Command-line front ends print the message (no traceback) and exit with status 2.
    Messages should name the offending argument or path and say how to fix it.
    """


def cli_command(name: str):
    """Decorator for a sub-command's ``func(args) -> int``.

    :class:`UserError` -> ``grootvl NAME: error: MESSAGE`` on stderr and exit status 2, with
    no traceback; Ctrl-C -> status 130. Anything else is a bug and keeps its traceback.
    Also routes library warnings (e.g. skipped images) to stderr.
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
