"""The exception type for bad user input in dense prediction (data sets, arguments)."""
from __future__ import annotations

from grootvl.engine.errors import UserError

_WORKER_MARKER = "Original Traceback"


class DenseInputError(UserError, ValueError):
    """Bad input: a missing file, an inconsistent annotation, a wrongly sized mask.

    The message names the offending file or argument and says how to fix it; the
    command-line tools print it (without a traceback) and exit with status 2.

    A DataLoader worker re-raises a worker's exception by calling the exception type with a
    message that embeds the worker's traceback; the constructor keeps only the original
    message, so users see the same one-line error with or without workers.
    """

    def __init__(self, message: str = ""):
        marker = f"{type(self).__name__}: "
        if _WORKER_MARKER in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)
