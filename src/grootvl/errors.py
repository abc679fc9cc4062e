"""The exceptions that mean "the user asked for something impossible" (not a bug).

This module sits below every other one (it imports nothing from grootvl), so operators,
models, data sets, the training engine and the command line all raise the same types (and
show values in their messages the same way, :func:`shown`).
Command-line front ends print the message, without a traceback, and exit with status 2.
"""
from __future__ import annotations

import reprlib

__all__ = ["DataError", "UserError", "shown"]

_WORKER_MARKER = "Original Traceback"


class UserError(Exception):
    """A problem with the command line, a config, a file or the data, not a bug.

    Messages name the offending argument, key or path and say how to fix it.

    A DataLoader worker re-raises a worker's exception by calling its type with a message
    that embeds the worker's traceback; the constructor keeps only the original message, so
    users see the same one-line error with or without worker processes.
    """

    def __init__(self, message: str = ""):
        marker = f"{type(self).__name__}: "
        if isinstance(message, str) and _WORKER_MARKER in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class DataError(UserError, ValueError):
    """Bad input data: a missing or unreadable file, an inconsistent annotation, a label map
    of the wrong size. Also a ``ValueError``, for code that catches those."""


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 3, 60, 60
_SHOWN.maxtuple = _SHOWN.maxlist = _SHOWN.maxdict = _SHOWN.maxset = 8


def shown(value, limit: int = 160) -> str:
    """``repr(value)`` for an error message: nested containers and long strings abridged
    (``...``), so that a value from a hostile file cannot make a message huge."""
    text = _SHOWN.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
