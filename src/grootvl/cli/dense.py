"""``grootvl det-train|det-eval|seg-train|seg-eval``: GrootV Mask R-CNN and UperNet.

The training commands are ``grootvl train`` with another packaged config (``maskrcnn_1x``,
``upernet_ade``) and the shortcut flags these recipes have always had.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import (Flag, add_config_options, add_flags, cli_command, config_validator,
                     json_object, output_file, print_config, write_text_file)

DET_EPILOG = """\
Data: COCO layout under --data (ROOT/train2017/, ROOT/val2017/,
ROOT/annotations/instances_{train,val}2017.json), or explicit --train-images/--train-ann/
--val-images/--val-ann. Masks may be polygons or RLE. The default config, maskrcnn_1x, is
the paper's 1x schedule (12 epochs, AdamW lr 1e-4, weight decay 0.05, lr x0.1 after epochs 8
and 11) at a total batch of 16 (e.g. 8 GPUs x --batch-size 2); any config key can be set
with --set KEY=VALUE (see --print-config).

examples:
  torchrun --nproc_per_node 8 -m grootvl det-train --data /datasets/coco --model tiny \\
      --pretrained-backbone grootv_tiny.pth --output runs/maskrcnn_t
  grootvl det-train ... --resume auto         # continue from OUTPUT/last.pth
  grootvl det-eval --checkpoint runs/maskrcnn_t/best.pth --data /datasets/coco
"""

SEG_EPILOG = """\
Data: ADE20K layout under --data (ADEChallengeData2016: images/{training,validation}/*.jpg,
annotations/{training,validation}/*.png; label 0 = other, ignored; classes 1..K).
The default config, upernet_ade, is the usual UperNet ADE20K recipe (512x512 crops, AdamW lr
6e-5, weight decay 0.01, 1500 warm-up iterations, poly decay; 127 epochs = 160k iterations
at a total batch of 16); any config key can be set with --set KEY=VALUE.

examples:
  torchrun --nproc_per_node 8 -m grootvl seg-train --data /datasets/ADEChallengeData2016 \\
      --model tiny --pretrained-backbone grootv_tiny.pth --output runs/upernet_t
  grootvl seg-eval --checkpoint runs/upernet_t/best.pth --data /datasets/ADEChallengeData2016
"""


MODEL_FLAGS = [
    Flag("--model", "model.name", "backbone: tiny | small | base (or a timm model name)"),
    Flag("--pretrained-backbone", "model.init_checkpoint",
         "GrootV ImageNet checkpoint for the backbone (classifier ignored)",
         dict(metavar="PATH")),
    Flag("--drop-path", "model.drop_path_rate", "backbone stochastic depth", dict(type=float)),
    Flag("--backbone-kwargs", "model.kwargs", "extra backbone constructor arguments, e.g. "
         "'{\"depths\": [2, 2, 4, 2]}'", dict(type=json_object, metavar="JSON")),
]
TRAIN_FLAGS = [
    Flag("--epochs", "sched.epochs", options=dict(type=int)),
    Flag("--batch-size", "train.batch_size", "per process", dict(type=int)),
    Flag("--lr", "optim.base_lr", "AdamW lr", dict(type=float)),
    Flag("--weight-decay", "optim.weight_decay", options=dict(type=float)),
    Flag("--layer-decay", "optim.layer_decay",
         "backbone layer-wise lr decay per block (the original used 0.87)", dict(type=float)),
    Flag("--warmup-iters", "sched.warmup_steps", options=dict(type=int)),
    Flag("--warmup-lr", "sched.warmup_lr", "lr at the start of the warm-up", dict(type=float)),
    Flag("--clip-grad", "optim.clip_grad", "max gradient norm", dict(type=float)),
    Flag("--eval-every", "train.epochs_between_eval", "epochs between evaluations",
         dict(type=int)),
    Flag("--log-every", "train.log_every", "steps between log records", dict(type=int)),
    Flag("--workers", "data.num_workers", "data loader processes per rank", dict(type=int)),
    Flag("--device", "train.device", "auto | cpu | cuda | cuda:N"),
    Flag("--amp", "train.amp", options=dict(choices=["auto", "none", "bf16", "fp16"])),
    Flag("--progress", "train.progress", options=dict(choices=["auto", "bar", "log", "none"])),
    Flag("--seed", "train.seed", options=dict(type=int)),
]
DET_FLAGS = [
    Flag("--data", "data.path", "COCO root (holds SPLIT/ and annotations/instances_SPLIT.json)"),
    *[Flag(f"--{which}-{what}", f"{key}", text) for which in ("train", "val")
      for what, key, text in (
          ("split", f"data.{which}_split", "split name"),
          ("images", f"detection.{which}_images", f"{which} image folder (default: DATA/SPLIT)"),
          ("ann", f"detection.{which}_ann", f"{which} instances JSON (default: "
           "DATA/annotations/instances_SPLIT.json)"))],
    *MODEL_FLAGS,
    Flag("--fpn-channels", "detection.fpn_channels", "FPN width", dict(type=int)),
    Flag("--box-head-dim", "detection.box_head_dim", "box head fully connected width",
         dict(type=int)),
    Flag("--mask-head-channels", "detection.mask_head_channels", "mask head convolution width",
         dict(type=int)),
    Flag("--detector-kwargs", "detection.detector_kwargs", "extra torchvision MaskRCNN "
         "arguments, e.g. '{\"box_batch_size_per_image\": 256}'",
         dict(type=json_object, metavar="JSON")),
    Flag("--min-size", "detection.min_size", "shorter image side", dict(type=int)),
    Flag("--max-size", "detection.max_size", "longer image side at most", dict(type=int)),
    *TRAIN_FLAGS,
    Flag("--lr-steps", "sched.decay_milestones", "epochs after which the lr is multiplied by "
         "0.1", dict(type=int, nargs="*", metavar="EPOCH")),
    Flag("--eval-batch-size", "detection.eval_batch_size", options=dict(type=int)),
]
SEG_FLAGS = [
    Flag("--data", "data.path", "root holding images/ and annotations/"),
    Flag("--train-split", "data.train_split"),
    Flag("--val-split", "data.val_split"),
    Flag("--num-classes", "segmentation.num_classes", "K (150 for ADE20K)", dict(type=int)),
    Flag("--scale", "segmentation.scale", "base image scale",
         dict(type=int, nargs=2, metavar=("LONG", "SHORT"))),
    *MODEL_FLAGS,
    Flag("--decoder-channels", "segmentation.decoder_channels", "UperNet width", dict(type=int)),
    Flag("--crop-size", "segmentation.crop_size", options=dict(type=int)),
    *TRAIN_FLAGS,
    Flag("--poly-power", "sched.decay_rate", options=dict(type=float)),
    Flag("--min-lr", "sched.min_lr", options=dict(type=float)),
]


def register(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("det-train", help="train GrootV Mask R-CNN on COCO-format data",
                              description="Train Mask R-CNN with a GrootV feature pyramid + FPN. "
                              "Writes OUTPUT/last.pth every epoch, best.pth (best box AP), "
                              "metrics.json, log.jsonl and summary.json.",
                              epilog=DET_EPILOG, formatter_class=fmt)
    _train_options(p, "maskrcnn_1x", DET_FLAGS)
    p.set_defaults(func=cli_command("det-train")(run_dense_train),
                   validate=config_validator(DET_FLAGS))

    p, g = _eval_parser(subparsers, "det-eval", "det-train", "data (COCO format)",
                        help="COCO box/mask AP of a det-train checkpoint",
                        description="Evaluate a det-train checkpoint with COCOeval (bbox and "
                        "segm); prints and writes the metrics as JSON (percent).",
                        epilog=DET_EPILOG)
    g.add_argument("--data", help="COCO root (holds SPLIT/ and annotations/instances_SPLIT.json)")
    g.add_argument("--val-split", default="val2017", help="default: %(default)s")
    g.add_argument("--val-images", help="image folder (default: DATA/SPLIT)")
    g.add_argument("--val-ann", help="instances JSON (default: DATA/annotations/instances_SPLIT.json)")
    p.add_argument("--batch-size", type=int, default=1)
    p.set_defaults(func=cli_command("det-eval")(run_det_eval), validate=config_validator(
        [Flag("--batch-size", "detection.eval_batch_size"), *EVAL_RUNTIME_FLAGS]))

    p = subparsers.add_parser("seg-train", help="train GrootV UperNet on ADE20K-format data",
                              description="Train UperNet on a GrootV feature pyramid. Writes "
                              "OUTPUT/last.pth every epoch, best.pth (best mIoU), metrics.json, "
                              "log.jsonl and summary.json.", epilog=SEG_EPILOG,
                              formatter_class=fmt)
    _train_options(p, "upernet_ade", SEG_FLAGS)
    p.set_defaults(func=cli_command("seg-train")(run_dense_train),
                   validate=config_validator(SEG_FLAGS))

    p, g = _eval_parser(subparsers, "seg-eval", "seg-train", "data (ADE20K format)",
                        help="mIoU / pixel accuracy of a seg-train checkpoint",
                        description="Single-scale evaluation of a seg-train checkpoint; prints "
                        "and writes mIoU, mAcc, aAcc and per-class IoU (percent).",
                        epilog=SEG_EPILOG)
    g.add_argument("--data", required=True, help="root holding images/ and annotations/")
    g.add_argument("--val-split", default="validation", help="default: %(default)s")
    g.add_argument("--scale", type=int, nargs=2, metavar=("LONG", "SHORT"),
                   help="base image scale (default: the checkpoint's)")
    p.set_defaults(func=cli_command("seg-eval")(run_seg_eval), validate=config_validator(
        [Flag("--scale", "segmentation.scale"), *EVAL_RUNTIME_FLAGS]))


# the evaluation options, checked by the run config's schema (also against the checkpoint's
# saved config, in evaluate_checkpoint)
EVAL_RUNTIME_FLAGS = [Flag("--workers", "data.num_workers"), Flag("--device", "train.device"),
                      Flag("--amp", "train.amp"), Flag("--progress", "train.progress")]


def _train_options(p, default_config: str, flags: list[Flag]) -> None:
    from .train import add_run_folder_options

    add_config_options(p, default_config)
    add_run_folder_options(p, output_required=True)
    add_flags(p.add_argument_group("shortcuts for config keys"), flags)


def _eval_parser(subparsers, name: str, train_command: str, data_title: str, **parser_args):
    """A ``*-eval`` parser with ``--checkpoint`` and the evaluation options; returns it and
    its (empty) data argument group."""
    p = subparsers.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter,
                              **parser_args)
    p.add_argument("--checkpoint", required=True,
                   help=f"last.pth or best.pth of a {train_command} run")
    data = p.add_argument_group(data_title)
    g = p.add_argument_group("evaluation")
    g.add_argument("--output", help="metrics JSON (default: eval_<split>.json by the checkpoint)")
    g.add_argument("--workers", type=int, default=2, help="data loader processes per rank")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"])
    g.add_argument("--progress", default="auto", choices=["auto", "bar", "log", "none"])
    return p, data


# ------------------------------------------------------------------------------- commands

def run_dense_train(args) -> int:
    from ..tasks import train
    from .train import print_summary

    cfg = args.run_config
    if args.print_config:
        print_config(cfg)
        return 0
    print_summary(train(cfg, args.output, resume=args.resume, overwrite=args.overwrite),
                  args.output)
    return 0


def _eval_output(args) -> Path:
    """Where the metrics go: --output, else eval_SPLIT.json by the checkpoint (det-eval and
    seg-eval must agree on where results land); checked before the evaluation runs."""
    path = Path(args.output or Path(args.checkpoint).parent / f"eval_{args.val_split}.json")
    return output_file(path, "--output")


def _report_eval(command: str, metrics: dict, args) -> None:
    """Metrics as one JSON line on stdout and in the :func:`_eval_output` file."""
    from ..engine.distributed import is_main_process

    if not is_main_process():
        return
    print(json.dumps(metrics))
    path = write_text_file(json.dumps(metrics, indent=2), _eval_output(args), "--output")
    print(f"{command}: metrics written to {path}", file=sys.stderr)


def run_det_eval(args) -> int:
    from ..tasks.detection import evaluate_checkpoint

    _eval_output(args)

    metrics = evaluate_checkpoint(args.checkpoint, args.data, args.val_split, args.val_images,
                                  args.val_ann, batch_size=args.batch_size, workers=args.workers,
                                  device=args.device, amp=args.amp, progress=args.progress)
    _report_eval("det-eval", metrics, args)
    return 0


def run_seg_eval(args) -> int:
    from ..tasks.segmentation import evaluate_checkpoint

    _eval_output(args)

    metrics = evaluate_checkpoint(args.checkpoint, args.data, args.val_split, scale=args.scale,
                                  workers=args.workers, device=args.device, amp=args.amp,
                                  progress=args.progress)
    _report_eval("seg-eval", metrics, args)
    return 0
