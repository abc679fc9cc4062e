"""``lm_eval`` command line with the ``grootl`` model registered.

lm-evaluation-harness 0.4.x looks models up in its own registry only, so the stock ``lm_eval``
command cannot see ``grootl``. This runs the same command after registering it::

    python -m grootvl.grootl.lm_eval_cli --model grootl --model_args pretrained=DIR --tasks piqa
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Register ``grootl`` with lm_eval, then run lm_eval's own command line on ``argv``."""
    from lm_eval.__main__ import cli_evaluate

    from . import lm_eval_model  # noqa: F401  (registers "grootl")

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
