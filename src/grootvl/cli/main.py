"""Entry point of the ``grootvl`` command.

Each sub-command module in ``SUBCOMMAND_MODULES`` exposes ``register(subparsers)``, which
adds its parser(s) and sets ``func`` (called with the parsed namespace, returning an exit
code). Modules are imported only when the command line is parsed, so ``grootvl --help``
stays fast even though training pulls in torch and timm.
"""
from __future__ import annotations

import argparse
import importlib
import sys

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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
