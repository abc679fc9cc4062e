"""Entry point of the ``grootvl`` command.

Each sub-command module in ``SUBCOMMAND_MODULES`` exposes ``register(subparsers)``, which
adds its parser(s) and sets ``func`` (called with the parsed namespace, returning an exit
code). Modules are imported only when the command line is parsed, so ``grootvl --help``
stays fast even though training pulls in torch and timm.

Sub-commands wrap their ``func`` in ``grootvl.cli.common.cli_command``, which first runs
the parser's ``validate`` hook (every option checked before anything runs) and prints a
:class:`~grootvl.errors.UserError` as one line, ``grootvl COMMAND: error: MESSAGE``, on
stderr with exit status 2; ``main`` applies the same rule to every sub-command, so none can
leak a traceback for a user mistake. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from grootvl.cli.common import error_line
from grootvl.errors import UserError

SUBCOMMAND_MODULES = [
    "grootvl.cli.train",      # train, eval, demo
    "grootvl.cli.inspect",    # benchmark, visualize, flops
    "grootvl.cli.lm",         # lm-finetune, lm-merge, lm-demo
    "grootvl.cli.dense",      # det-train, det-eval, seg-train, seg-eval
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grootvl",
        description="GrootVL tree-topology state space models: train, evaluate and inspect "
        "GrootV backbones, fine-tune GrootL language models, dense prediction.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"grootvl {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
