"""``grootvl export``: a checkpoint to timm's Hugging Face Hub layout (and optionally the Hub)."""
from __future__ import annotations

import argparse

from ..errors import UserError
from .common import cli_command, options_validator

EPILOG = """\
The folder holds config.json (architecture, its options, pretrained_cfg), model.safetensors and
a model card README.md, as timm writes them. Load it back with
    import grootvl, timm
    model = timm.create_model("local-dir:DIR", pretrained=True)
(`import grootvl` registers the grootv_* architectures with timm).

examples:
  grootvl export --checkpoint grootv_t_1k.pth --output hub/grootv_tiny --use-ema
  grootvl export --checkpoint runs/demo/best.pth --output hub/demo
  grootvl export --checkpoint w.safetensors --output hub/w --set tree_sharing=stage
  grootvl export --checkpoint runs/demo/last.pth --output hub/demo --push-to-hub me/grootv-demo
"""

_check_options = options_validator("ExportOptions", {"num_classes": "--num-classes"})


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a checkpoint in timm's Hub layout (local-dir:/hf-hub: loadable)",
        description="Rebuild the GrootV model a checkpoint holds (a release .pth, a `grootvl train` "
        "checkpoint or a .safetensors file) and write it in timm's Hugging Face Hub layout.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="PATH", help=".pth or .safetensors file")
    p.add_argument("--output", required=True, metavar="DIR", help="folder to write (new or empty)")
    p.add_argument("--model", help="GrootV architecture (default: the training config's, else "
                   "the variant the weights' channels and depths match)")
    p.add_argument("--use-ema", action="store_true", help="export the EMA weights (model_ema)")
    p.add_argument("--set", dest="model_kwargs", action="append", default=[], metavar="KEY=VALUE",
                   help="model option the weights do not record (YAML value), e.g. "
                   "--set tree_sharing=stage (repeatable)")
    p.add_argument("--num-classes", type=int, help="replace the classifier by a new, untrained "
                   "one with N outputs (0: no classifier)")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --output folder")
    p.add_argument("--push-to-hub", metavar="REPO", help="also upload to this Hugging Face Hub "
                   "repository (user/name; uses your huggingface_hub login or HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="create the Hub repository as private")
    p.set_defaults(func=cli_command("export")(run_export), validate=_validate_export)


def _validate_export(args) -> None:
    """``--num-classes`` by its schema, ``--set`` parsed into ``args.model_options``, and the
    ``--output`` folder (before the checkpoint is read)."""
    from ..engine.config import parse_override
    from ..models.hub import check_output_folder

    _check_options(args)
    args.model_options = dict(parse_override(text) for text in args.model_kwargs)
    check_output_folder(args.output, args.overwrite, "--output", "--overwrite")


def run_export(args) -> int:
    from ..files import first_line
    from ..models.hub import export_for_hub, push_to_hub

    built = export_for_hub(args.checkpoint, args.output, model_name=args.model,
                           use_ema=args.use_ema, model_kwargs=args.model_options,
                           num_classes=args.num_classes, overwrite=args.overwrite)
    print(f"wrote {args.output}: {built.architecture} "
          f"({', '.join(f'{k}={v}' for k, v in built.model_kwargs.items())})")
    if args.push_to_hub:
        try:
            info = push_to_hub(built, args.push_to_hub, private=args.private)
        except Exception as exc:  # network and authorisation errors from huggingface_hub
            raise UserError(f"--push-to-hub {args.push_to_hub}: upload failed "
                            f"({first_line(exc)})") from None
        print(f"pushed to {getattr(info, 'commit_url', None) or args.push_to_hub}")
    return 0
