"""``grootvl train``, ``grootvl eval`` and ``grootvl demo``: image classification."""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from .common import (Flag, add_config_options, add_flags, cli_command, config_validator,
                     output_file, print_config, print_json_result, resolve_config)

TRAIN_EPILOG = """\
Every config key can be overridden: --set optim.base_lr=1e-3 --set aug.mixup=0 (values are
YAML). Dedicated flags below win over --set. Packaged configs: grootv_tiny (default),
grootv_small, grootv_base, demo (and maskrcnn_1x, upernet_ade: any task trains here). The
learning rate is scaled linearly with the total batch:
lr = optim.base_lr * batch_size * processes * accum_steps / optim.lr_base_batch.

examples:
  grootvl train --config grootv_tiny --data /datasets/imagenet --output runs/grootv_t
  torchrun --nproc_per_node 8 -m grootvl train --config grootv_small --data /datasets/imagenet
  grootvl train --model resnet18 --data my_folder --epochs 30 --set aug.mixup=0
  grootvl train ... --resume auto        # continue an interrupted run from its last.pth
"""

TRAIN_FLAGS = [
    Flag("--model", "model.name", "timm model name, e.g. grootv_small, resnet50"),
    Flag("--epochs", "sched.epochs", options=dict(type=int)),
    Flag("--warmup-epochs", "sched.warmup_epochs", options=dict(type=int)),
    Flag("--batch-size", "train.batch_size", "per-process batch size", dict(type=int)),
    Flag("--lr", "optim.base_lr", "base lr at optim.lr_base_batch", dict(type=float)),
    Flag("--weight-decay", "optim.weight_decay", options=dict(type=float)),
    Flag("--clip-grad", "optim.clip_grad", "max gradient norm", dict(type=float)),
    Flag("--accum-steps", "optim.accum_steps", "gradient accumulation", dict(type=int)),
    Flag("--drop-path", "model.drop_path_rate", options=dict(type=float)),
    Flag("--img-size", "data.img_size", options=dict(type=int)),
    Flag("--in-chans", "data.in_chans", "1 for grey images", dict(type=int)),
    Flag("--workers", "data.num_workers", "data loader processes per rank", dict(type=int)),
    Flag("--amp", "train.amp", options=dict(choices=["auto", "none", "bf16", "fp16"])),
    Flag("--device", "train.device", "auto | cpu | cuda | cuda:N"),
    Flag("--seed", "train.seed", options=dict(type=int)),
    Flag("--threads", "train.threads", "CPU threads per process", dict(type=int)),
    Flag("--grad-checkpointing", "train.grad_checkpointing",
         "recompute activations in backward", dict(action="store_true")),
    Flag("--no-channels-last", "train.channels_last", "keep NCHW memory format",
         dict(action="store_false")),
    Flag("--no-ema", "ema.enabled", "no model EMA", dict(action="store_false")),
    Flag("--deterministic", "train.deterministic", "deterministic kernels",
         dict(action="store_true")),
    Flag("--limit-train-steps", "train.limit_train_steps", "optimizer steps per epoch at most",
         dict(type=int)),
    Flag("--limit-val-steps", "train.limit_val_steps", "validation batches at most",
         dict(type=int)),
    Flag("--log-every", "train.log_every", "steps between log records", dict(type=int)),
    Flag("--progress", "train.progress", options=dict(choices=["auto", "bar", "log", "none"])),
]
DATA_FLAG = Flag("--data", "data.path", "dataset folder holding train/ and val/")


def register(subparsers) -> None:
    _register_train(subparsers)
    _register_eval(subparsers)
    _register_demo(subparsers)


def add_run_folder_options(p: argparse.ArgumentParser, output_required: bool = False) -> None:
    """``--output``, ``--resume`` and ``--overwrite`` of every training command."""
    p.add_argument("--output", required=output_required,
                   help="run folder for checkpoints and logs (locked while the run lasts)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="'auto': continue from OUTPUT/last.pth if it exists; or a checkpoint "
                   "path (last.pth; resuming a finished run changes nothing)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an OUTPUT that holds another run's files, deleting "
                   "them (without it such a folder is refused)")


def _add_run_options(p: argparse.ArgumentParser, default_config: str) -> None:
    add_config_options(p, default_config)
    add_run_folder_options(p)
    add_flags(p.add_argument_group("shortcuts for common config keys"), TRAIN_FLAGS)
    p.add_argument("--simulate-crash-at-step", type=int, metavar="N",
                   help="testing aid: SIGKILL this process right after optimizer step N")


def _register_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train an image classifier on an image-folder dataset",
        description=textwrap.fill(
            "Train an image classifier (GrootV or any timm model) on DIR/train and DIR/val, one "
            "sub-folder per class (ImageNet's layout). Writes OUTPUT/last.pth every epoch "
            "(atomically), best.pth and ema_best.pth on improvement, config.yaml, log.jsonl "
            "(JSON lines), metrics.json and summary.json. Multi-GPU / multi-node: launch with "
            "torchrun.", 88),
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, [DATA_FLAG])
    _add_run_options(p, "grootv_tiny")
    p.set_defaults(func=cli_command("train")(run_train),
                   validate=config_validator([DATA_FLAG, *TRAIN_FLAGS]))


def run_train(args) -> int:
    from ..tasks import train

    cfg = args.run_config
    if args.print_config:
        print_config(cfg)
        return 0
    output = args.output or f"runs/{cfg.model.name}"
    summary = train(cfg, output, resume=args.resume, crash_at_step=args.simulate_crash_at_step,
                    overwrite=args.overwrite)
    print_summary(summary, output)
    return 0


def print_summary(summary: dict, output) -> None:
    """One line on stderr from the main process: epochs and the best primary metric."""
    from ..engine.distributed import is_main_process

    metric = summary["primary_metric"]
    best = summary.get(f"best_{metric}")
    if is_main_process() and best is not None and not summary.get("already_finished"):
        print(f"done: {summary['epochs_completed']} epochs, best {metric} {best:.2f}, "
              f"checkpoints in {output}", file=sys.stderr)


# --------------------------------------------------------------------------------------- eval

def _register_eval(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="top-1/top-5 accuracy and loss of a checkpoint on an image folder",
        description="Evaluate a checkpoint (from grootvl train, or an original GrootV release "
        "checkpoint) on an image folder: DIR/<class>/<image>, or DIR/val/<class>/<image>.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pth)")
    p.add_argument("--data", required=True, help="folder of class sub-folders, or one holding SPLIT/")
    p.add_argument("--split", help="the sub-folder of --data to evaluate (default: val/ if "
                   "there, else --data itself)")
    p.add_argument("--model", help="timm model name (default: the one the checkpoint was trained as, "
                   "with its model.kwargs; grootv_tiny for a checkpoint without a config, such as "
                   "an original release)")
    p.add_argument("--use-ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--img-size", type=int, help="default: the checkpoint's config, else 224")
    p.add_argument("--crop-pct", type=float, help="default: the checkpoint's config, else 0.875")
    p.add_argument("--in-chans", type=int, help="default: the checkpoint's config, else 3")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"])
    p.add_argument("--progress", default="auto", choices=["auto", "bar", "log", "none"])
    p.add_argument("--json", dest="json_out", help="also write the metrics to this JSON file")
    p.set_defaults(func=cli_command("eval")(run_eval), validate=config_validator(EVAL_FLAGS))


# the evaluation options, checked by the run config's schema (also against the checkpoint's
# saved config, in evaluate_checkpoint)
EVAL_FLAGS = [Flag("--batch-size", "train.batch_size"), Flag("--img-size", "data.img_size"),
              Flag("--crop-pct", "data.crop_pct"), Flag("--in-chans", "data.in_chans"),
              Flag("--workers", "data.num_workers"), Flag("--device", "train.device"),
              Flag("--amp", "train.amp"), Flag("--progress", "train.progress")]


def run_eval(args) -> int:
    from ..engine.distributed import is_main_process
    from ..tasks.classification import evaluate_checkpoint

    if args.json_out:
        output_file(args.json_out, "--json")

    result = evaluate_checkpoint(
        args.checkpoint, args.data, args.split, model=args.model, use_ema=args.use_ema,
        batch_size=args.batch_size, img_size=args.img_size, crop_pct=args.crop_pct,
        in_chans=args.in_chans, workers=args.workers, device=args.device, amp=args.amp,
        progress=args.progress)
    if is_main_process():
        print_json_result(result, args.json_out)
    return 0


# --------------------------------------------------------------------------------------- demo

def _register_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="train a small GrootV on scikit-learn's digits (no download), write a report",
        description=textwrap.fill(
            "Prepare scikit-learn's handwritten digits as an image folder, train a small GrootV "
            "with the same engine as `grootvl train` (config: demo), and write to OUTPUT: "
            "last.pth/best.pth, metrics.json (test accuracy, per-epoch loss/accuracy, wall "
            "time), training_curve.png and tree.png (the spanning tree GrootV builds over a test "
            "digit and the propagation weights from one pixel).", 88),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="where to write the digits images (default: OUTPUT/data)")
    _add_run_options(p, "demo")
    p.set_defaults(func=cli_command("demo")(run_demo), validate=_validate_demo)


def _validate_demo(args) -> None:
    args.output = args.output or "runs/demo"
    args.data_dir = str(Path(args.data_dir) if args.data_dir else Path(args.output) / "data")
    args.run_config = resolve_config(args, [Flag("--data-dir", "data.path"), *TRAIN_FLAGS])


def run_demo(args) -> int:
    from ..tasks.demo import run_demo as demo

    output = Path(args.output)
    cfg = args.run_config
    if args.print_config:
        print_config(cfg)
        return 0
    metrics = demo(cfg, output, resume=args.resume, crash_at_step=args.simulate_crash_at_step,
                   overwrite=args.overwrite)
    print(f"demo: test accuracy {metrics['test_accuracy']:.2f}% after {len(metrics['epochs'])} "
          f"epochs, wall time {metrics['wall_time_s']:.0f} s; wrote {output}/metrics.json, "
          f"training_curve.png, tree.png, last.pth", file=sys.stderr)
    return 0
