"""``grootvl det-train|det-eval|seg-train|seg-eval``: GrootV Mask R-CNN and UperNet."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grootvl.engine.errors import cli_command

DET_EPILOG = """\
Data: COCO layout under --data (ROOT/train2017/, ROOT/val2017/,
ROOT/annotations/instances_{train,val}2017.json), or explicit --train-images/--train-ann/
--val-images/--val-ann. Masks may be polygons or RLE. Defaults follow the paper's 1x schedule
(12 epochs, AdamW lr 1e-4, weight decay 0.05, lr x0.1 after epochs 8 and 11) at a total batch
of 16 (e.g. 8 GPUs x --batch-size 2).

examples:
  torchrun --nproc_per_node 8 -m grootvl det-train --data /datasets/coco --model tiny \\
      --pretrained-backbone grootv_tiny.pth --output runs/maskrcnn_t
  grootvl det-train ... --resume auto         # continue from OUTPUT/last.pth
  grootvl det-eval --checkpoint runs/maskrcnn_t/best.pth --data /datasets/coco
"""

SEG_EPILOG = """\
Data: ADE20K layout under --data (ADEChallengeData2016: images/{training,validation}/*.jpg,
annotations/{training,validation}/*.png; label 0 = other, ignored; classes 1..K).
Defaults follow the usual UperNet ADE20K recipe (512x512 crops, AdamW lr 6e-5, weight decay
0.01, 1500 warm-up iterations, poly decay; 127 epochs = 160k iterations at a total batch of
16).

examples:
  torchrun --nproc_per_node 8 -m grootvl seg-train --data /datasets/ADEChallengeData2016 \\
      --model tiny --pretrained-backbone grootv_tiny.pth --output runs/upernet_t
  grootvl seg-eval --checkpoint runs/upernet_t/best.pth --data /datasets/ADEChallengeData2016
"""


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}); e.g. '{{\"depths\": [2, 2, 4, 2]}}'")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"depths\": [2, 2, 4, 2]}'")
    return value


def register(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("det-train", help="train GrootV Mask R-CNN on COCO-format data",
                              description="Train Mask R-CNN with a GrootV feature pyramid + FPN. "
                              "Writes OUTPUT/last.pth every epoch, best.pth (best box AP), "
                              "metrics.json, log.jsonl and summary.json.",
                              epilog=DET_EPILOG, formatter_class=fmt)
    _coco_data_options(p, train=True)
    _model_options(p)
    p.add_argument("--fpn-channels", type=int, default=256, help="FPN width (default 256)")
    p.add_argument("--box-head-dim", type=int, default=1024,
                   help="box head fully connected width (default 1024)")
    p.add_argument("--mask-head-channels", type=int, default=256,
                   help="mask head convolution width (default 256)")
    p.add_argument("--detector-kwargs", type=_json_dict, default=None, metavar="JSON",
                   help="extra torchvision MaskRCNN arguments, e.g. "
                   "'{\"box_batch_size_per_image\": 256}'")
    p.add_argument("--min-size", type=int, default=800, help="shorter image side (default 800)")
    p.add_argument("--max-size", type=int, default=1333, help="longer side at most (default 1333)")
    _train_options(p, epochs=12, lr=1e-4, weight_decay=0.05, warmup_iters=500, warmup_ratio=1e-3)
    p.add_argument("--lr-steps", type=int, nargs="*", default=[8, 11], metavar="EPOCH",
                   help="epochs after which the lr is multiplied by 0.1 (default: 8 11)")
    p.add_argument("--eval-batch-size", type=int, default=1)
    p.set_defaults(func=cli_command("det-train")(run_det_train))

    p = subparsers.add_parser("det-eval", help="COCO box/mask AP of a det-train checkpoint",
                              description="Evaluate a det-train checkpoint with COCOeval (bbox and "
                              "segm); prints and writes the metrics as JSON (percent).",
                              epilog=DET_EPILOG, formatter_class=fmt)
    p.add_argument("--checkpoint", required=True, help="last.pth or best.pth of a det-train run")
    _coco_data_options(p, train=False)
    p.add_argument("--batch-size", type=int, default=1)
    _eval_options(p)
    p.set_defaults(func=cli_command("det-eval")(run_det_eval))

    p = subparsers.add_parser("seg-train", help="train GrootV UperNet on ADE20K-format data",
                              description="Train UperNet on a GrootV feature pyramid. Writes "
                              "OUTPUT/last.pth every epoch, best.pth (best mIoU), metrics.json, "
                              "log.jsonl and summary.json.", epilog=SEG_EPILOG,
                              formatter_class=fmt)
    _ade_data_options(p, train=True)
    _model_options(p)
    p.add_argument("--decoder-channels", type=int, default=512, help="UperNet width (default 512)")
    p.add_argument("--crop-size", type=int, default=512)
    _train_options(p, epochs=127, lr=6e-5, weight_decay=0.01, warmup_iters=1500,
                   warmup_ratio=1e-6)
    p.add_argument("--poly-power", type=float, default=1.0)
    p.add_argument("--min-lr", type=float, default=0.0)
    p.set_defaults(func=cli_command("seg-train")(run_seg_train))

    p = subparsers.add_parser("seg-eval", help="mIoU / pixel accuracy of a seg-train checkpoint",
                              description="Single-scale evaluation of a seg-train checkpoint; "
                              "prints and writes mIoU, mAcc, aAcc and per-class IoU (percent).",
                              epilog=SEG_EPILOG, formatter_class=fmt)
    p.add_argument("--checkpoint", required=True, help="last.pth or best.pth of a seg-train run")
    _ade_data_options(p, train=False)
    _eval_options(p)
    p.set_defaults(func=cli_command("seg-eval")(run_seg_eval))


def _coco_data_options(p, train: bool) -> None:
    g = p.add_argument_group("data (COCO format)")
    g.add_argument("--data", help="COCO root (holds SPLIT/ and annotations/instances_SPLIT.json)")
    splits = (("train", "train2017"), ("val", "val2017")) if train else (("val", "val2017"),)
    for which, default in splits:
        g.add_argument(f"--{which}-split", default=default, help="default: %(default)s")
        g.add_argument(f"--{which}-images", help=f"{which} image folder (default: DATA/SPLIT)")
        g.add_argument(f"--{which}-ann", help=f"{which} instances JSON "
                       "(default: DATA/annotations/instances_SPLIT.json)")


def _ade_data_options(p, train: bool) -> None:
    g = p.add_argument_group("data (ADE20K format)")
    g.add_argument("--data", required=True, help="root holding images/ and annotations/")
    if train:
        g.add_argument("--train-split", default="training")
        g.add_argument("--num-classes", type=int, default=150, help="K (default 150, ADE20K)")
    g.add_argument("--val-split", default="validation")
    g.add_argument("--scale", type=int, nargs=2, default=None if not train else [2048, 512],
                   metavar=("LONG", "SHORT"), help="base image scale (default 2048 512)")


def _model_options(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="tiny", help="tiny | small | base (or a timm model name)")
    g.add_argument("--pretrained-backbone", metavar="PATH",
                   help="GrootV ImageNet checkpoint for the backbone (classifier head ignored)")
    g.add_argument("--drop-path", type=float, default=None,
                   help="backbone stochastic depth (default: the variant's)")
    g.add_argument("--backbone-kwargs", type=_json_dict, default=None, metavar="JSON",
                   help="extra backbone constructor arguments, e.g. '{\"depths\": [2, 2, 4, 2]}'")


def _train_options(p, epochs, lr, weight_decay, warmup_iters, warmup_ratio) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--output", required=True, help="run folder for checkpoints and logs")
    g.add_argument("--resume", metavar="auto|PATH",
                   help="'auto': continue from OUTPUT/last.pth if present; or a checkpoint path")
    g.add_argument("--epochs", type=int, default=epochs, help="default: %(default)s")
    g.add_argument("--batch-size", type=int, default=2, help="per process (default 2)")
    g.add_argument("--lr", type=float, default=lr, help="AdamW lr (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=weight_decay)
    g.add_argument("--layer-decay", type=float, default=1.0,
                   help="backbone layer-wise lr decay per block (1 = off; the original used 0.87)")
    g.add_argument("--warmup-iters", type=int, default=warmup_iters)
    g.add_argument("--warmup-ratio", type=float, default=warmup_ratio)
    g.add_argument("--clip-grad", type=float, default=None, help="max gradient norm")
    g.add_argument("--eval-every", type=int, default=1, help="epochs between evaluations")
    g.add_argument("--log-every", type=int, default=20, help="steps between log records")
    _runtime_options(g)
    g.add_argument("--seed", type=int, default=0)


def _runtime_options(g) -> None:
    g.add_argument("--workers", type=int, default=2, help="data loader processes per rank")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"])
    g.add_argument("--progress", default="auto", choices=["auto", "bar", "log", "none"])


def _eval_options(p) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--output", help="metrics JSON (default: eval_<split>.json by the checkpoint)")
    _runtime_options(g)


# ------------------------------------------------------------------------------- commands

def _report_eval(command: str, metrics: dict, args) -> None:
    """Metrics as one JSON line on stdout and a file: --output, else eval_SPLIT.json by the
    checkpoint (det-eval and seg-eval must agree on where results land)."""
    print(json.dumps(metrics))
    path = Path(args.output or Path(args.checkpoint).parent / f"eval_{args.val_split}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2))
    print(f"{command}: metrics written to {path}", file=sys.stderr)


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _train(command: str, task, metric_name: str, args) -> int:
    """Run the shared dense training loop on ``task``; one summary line from the main rank."""
    from grootvl.dense.training import run_dense_training

    summary = run_dense_training(task, args)
    if _is_main_process():
        print(f"{command}: {summary['epochs_completed']} epochs, best {metric_name} "
              f"{summary['best_metric']:.2f}, checkpoints in {args.output}", file=sys.stderr)
    return 0


def run_det_train(args) -> int:
    from grootvl.dense.detection import DetectionTask

    return _train("det-train", DetectionTask(args), "box AP", args)


def run_seg_train(args) -> int:
    from grootvl.dense.segmentation import SegmentationTask

    return _train("seg-train", SegmentationTask(args), "mIoU", args)


def run_det_eval(args) -> int:
    from grootvl.dense.coco import CocoInstances
    from grootvl.dense.detection import coco_paths, evaluate_detection, maskrcnn_from_checkpoint
    from grootvl.engine import distributed as D
    from grootvl.engine.amp import resolve_amp
    from grootvl.engine.checkpoint import load_checkpoint_file

    images, ann = coco_paths(args, "val")
    # the data first: checking it is cheap, loading the model is not
    dataset = CocoInstances(images, ann, image_argument="--val-images", ann_argument="--val-ann")
    ckpt = load_checkpoint_file(args.checkpoint)
    model = maskrcnn_from_checkpoint(ckpt)
    category_ids = [c["id"] for c in ckpt["categories"]]
    dataset.use_categories(category_ids)
    env = D.init_distributed(args.device)
    try:
        model.to(env.device)
        metrics = evaluate_detection(model, dataset, env, resolve_amp(args.amp, env.device),
                                     args.batch_size, args.workers, args.progress, category_ids)
    finally:
        D.teardown_distributed()
    if env.is_main:
        metrics = {"checkpoint": str(args.checkpoint), "annotations": str(ann), **metrics}
        _report_eval("det-eval", metrics, args)
    return 0


def run_seg_eval(args) -> int:
    from grootvl.dense.ade import ADESegmentation
    from grootvl.dense.segmentation import evaluate_segmentation, upernet_from_checkpoint
    from grootvl.engine import distributed as D
    from grootvl.engine.amp import resolve_amp
    from grootvl.engine.checkpoint import load_checkpoint_file

    ckpt = load_checkpoint_file(args.checkpoint)
    model = upernet_from_checkpoint(ckpt)
    scale = args.scale or (ckpt.get("config") or {}).get("scale") or [2048, 512]
    dataset = ADESegmentation(args.data, args.val_split, ckpt["num_classes"], scale=scale)
    env = D.init_distributed(args.device)
    try:
        model.to(env.device)
        metrics = evaluate_segmentation(model, dataset, env, resolve_amp(args.amp, env.device),
                                        args.workers, args.progress)
    finally:
        D.teardown_distributed()
    if env.is_main:
        metrics = {"checkpoint": str(args.checkpoint), "data": str(args.data), **metrics}
        _report_eval("seg-eval", metrics, args)
    return 0
