"""``grootvl train``, ``grootvl eval`` and ``grootvl demo``: image classification."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from grootvl.engine.errors import UserError, cli_command

TRAIN_EPILOG = """\
Every config key can be overridden: --set optim.base_lr=1e-3 --set aug.mixup=0 (values are
YAML). Dedicated flags below win over --set. Packaged configs: grootv_tiny (default),
grootv_small, grootv_base, demo. The learning rate is scaled linearly with the total batch:
lr = optim.base_lr * batch_size * processes * accum_steps / optim.lr_base_batch.

examples:
  grootvl train --config grootv_tiny --data /datasets/imagenet --output runs/grootv_t
  torchrun --nproc_per_node 8 -m grootvl train --config grootv_small --data /datasets/imagenet
  grootvl train --model resnet18 --data my_folder --epochs 30 --set aug.mixup=0
  grootvl train ... --resume auto        # continue an interrupted run from its last.pth
"""

# flag dest -> dotted config key
_FLAG_KEYS = {
    "data": "data.path", "model": "model.name", "epochs": "sched.epochs",
    "warmup_epochs": "sched.warmup_epochs", "batch_size": "train.batch_size",
    "lr": "optim.base_lr", "weight_decay": "optim.weight_decay", "clip_grad": "optim.clip_grad",
    "accum_steps": "optim.accum_steps", "drop_path": "model.drop_path_rate",
    "img_size": "data.img_size", "in_chans": "data.in_chans", "workers": "data.num_workers",
    "amp": "train.amp", "device": "train.device", "seed": "train.seed",
    "limit_train_steps": "train.limit_train_steps", "limit_val_steps": "train.limit_val_steps",
    "log_every": "train.log_every", "progress": "train.progress", "threads": "train.threads",
}


def register(subparsers) -> None:
    _register_train(subparsers)
    _register_eval(subparsers)
    _register_demo(subparsers)


def _add_run_options(p: argparse.ArgumentParser, default_config: str | None) -> None:
    p.add_argument("--config", default=default_config,
                   help="packaged config name or YAML path (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set sched.warmup_epochs=5 (repeatable)")
    p.add_argument("--output", help="run folder for checkpoints and logs")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="'auto': continue from OUTPUT/last.pth if it exists; or a checkpoint path")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    g = p.add_argument_group("shortcuts for common config keys")
    g.add_argument("--model", help="timm model name (model.name), e.g. grootv_small, resnet50")
    g.add_argument("--epochs", type=int, help="sched.epochs")
    g.add_argument("--warmup-epochs", type=int, help="sched.warmup_epochs")
    g.add_argument("--batch-size", type=int, help="per-process batch size (train.batch_size)")
    g.add_argument("--lr", type=float, help="base lr at optim.lr_base_batch (optim.base_lr)")
    g.add_argument("--weight-decay", type=float, help="optim.weight_decay")
    g.add_argument("--clip-grad", type=float, help="max gradient norm (optim.clip_grad)")
    g.add_argument("--accum-steps", type=int, help="gradient accumulation (optim.accum_steps)")
    g.add_argument("--drop-path", type=float, help="model.drop_path_rate")
    g.add_argument("--img-size", type=int, help="data.img_size")
    g.add_argument("--in-chans", type=int, help="data.in_chans (1 for grey images)")
    g.add_argument("--workers", type=int, help="data loader processes per rank (data.num_workers)")
    g.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"], help="train.amp")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N (train.device)")
    g.add_argument("--seed", type=int, help="train.seed")
    g.add_argument("--threads", type=int, help="CPU threads per process (train.threads)")
    g.add_argument("--grad-checkpointing", action="store_true", default=None,
                   help="recompute activations in backward (train.grad_checkpointing)")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None,
                   help="keep NCHW memory format (train.channels_last=false)")
    g.add_argument("--no-ema", dest="ema", action="store_false", default=None,
                   help="no model EMA (ema.enabled=false)")
    g.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic kernels (train.deterministic)")
    g.add_argument("--limit-train-steps", type=int, help="optimizer steps per epoch at most")
    g.add_argument("--limit-val-steps", type=int, help="validation batches at most")
    g.add_argument("--log-every", type=int, help="steps between log records")
    g.add_argument("--progress", choices=["auto", "bar", "log", "none"], help="train.progress")
    p.add_argument("--simulate-crash-at-step", type=int, metavar="N",
                   help="testing aid: SIGKILL this process right after optimizer step N")


def _register_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train an image classifier on an image-folder dataset",
        description=textwrap.fill(
            "Train an image classifier (GrootV or any timm model) on DIR/train and DIR/val, one "
            "sub-folder per class (ImageNet's layout). Writes OUTPUT/last.pth every epoch "
            "(atomically), best.pth and ema_best.pth on improvement, config.yaml, log.jsonl "
            "(JSON lines) and summary.json. Multi-GPU / multi-node: launch with torchrun.", 88),
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset folder holding train/ and val/ (data.path)")
    _add_run_options(p, "grootv_tiny")
    p.set_defaults(func=cli_command("train")(run_train))


def resolve_config(args) -> dict:
    """Config from --config, --set and the shortcut flags (in that order of precedence)."""
    from grootvl.engine.config import build_config, load_config_file

    schema = load_config_file("grootv_tiny")
    explicit = {key: getattr(args, dest, None) for dest, key in _FLAG_KEYS.items()}
    explicit.update({"train.grad_checkpointing": args.grad_checkpointing,
                     "train.channels_last": args.channels_last, "ema.enabled": args.ema,
                     "train.deterministic": args.deterministic})
    return build_config(schema, args.config, args.overrides, explicit)


def run_train(args) -> int:
    from grootvl.engine.config import dump_config
    from grootvl.engine.trainer import run_training

    cfg = resolve_config(args)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    output = args.output or f"runs/{cfg['model']['name']}"
    summary = run_training(cfg, output, resume=args.resume, crash_at_step=args.simulate_crash_at_step)
    _print_summary(summary, output)
    return 0


def _print_summary(summary: dict, output) -> None:
    last = summary.get("last") or {}
    if "val_top1" in last:
        print(f"done: {summary['epochs_completed']} epochs, val top-1 {last['val_top1']:.2f}% "
              f"(best {summary['best_top1']:.2f}%), checkpoints in {output}", file=sys.stderr)


# --------------------------------------------------------------------------------------- eval

def _register_eval(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="top-1/top-5 accuracy and loss of a checkpoint on an image folder",
        description="Evaluate a checkpoint (from grootvl train, or an original GrootV release "
        "checkpoint) on an image folder: DIR/<class>/<image>, or DIR/val/<class>/<image>.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pth)")
    p.add_argument("--data", required=True, help="folder of class sub-folders, or one holding SPLIT/")
    p.add_argument("--split", default="val", help="sub-folder used when DIR has one (default: val)")
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
    p.add_argument("--json", dest="json_out", help="also write the metrics to this JSON file")
    p.set_defaults(func=cli_command("eval")(run_eval))


def run_eval(args) -> int:
    import torch

    from grootvl.data import ImageFolderDataset, ShardSampler, build_transform
    from grootvl.engine import distributed as D
    from grootvl.engine.amp import resolve_amp
    from grootvl.engine.checkpoint import read_checkpoint_meta
    from grootvl.engine.classification import evaluate
    from grootvl.engine.config import deep_merge, load_config_file
    from grootvl.engine.progress import Progress, print_json_result
    from grootvl.engine.weights import create_model, load_weights

    ckpt = read_checkpoint_meta(args.checkpoint)
    name, model_kwargs = eval_model_spec(ckpt, args.model, args.checkpoint)
    cfg = deep_merge(load_config_file("grootv_tiny"), ckpt.get("config") or {})
    dcfg = dict(cfg["data"])
    for key, value in (("img_size", args.img_size), ("crop_pct", args.crop_pct),
                       ("in_chans", args.in_chans)):
        if value is not None:
            dcfg[key] = value
    root = Path(args.data)
    if (root / args.split).is_dir():
        root = root / args.split
    env = D.init_distributed(args.device)
    try:
        ds = ImageFolderDataset(root, mode="L" if dcfg["in_chans"] == 1 else "RGB",
                                what="evaluation folder",
                                transform=build_transform(dcfg, cfg["aug"], is_training=False))
        if ckpt.get("classes"):  # use the class indices the model was trained with
            ds.remap_classes(ckpt["classes"])
        model = create_model(name, len(ds.classes), dcfg["in_chans"], **model_kwargs)
        load_weights(model, args.checkpoint, use_ema=args.use_ema, model_name=name)
        model.to(env.device)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=args.batch_size, num_workers=args.workers,
            sampler=ShardSampler(len(ds), env.rank, env.world_size))
        progress = Progress(len(loader), "eval", enabled=env.is_main)
        metrics = evaluate(model, loader, device=env.device, amp=resolve_amp(args.amp, env.device),
                           progress=progress, world_size=env.world_size)
        progress.close()
    finally:
        D.teardown_distributed()
    if env.is_main:
        result = {"checkpoint": str(args.checkpoint), "model": name, "model_kwargs": model_kwargs,
                  "ema": args.use_ema,
                  "data": str(root), **metrics}
        print_json_result(result, args.json_out)
    return 0


def eval_model_spec(meta: dict, model: str | None, checkpoint) -> tuple[str, dict]:
    """``(model name, model kwargs)`` to rebuild the model a checkpoint was trained as.

    ``meta`` is :func:`~grootvl.engine.checkpoint.read_checkpoint_meta`'s result. A checkpoint
    of ``grootvl train`` carries its config: its ``model.name`` and ``model.kwargs`` are used
    (``--model`` naming another architecture gets that architecture's defaults). One without a
    config (an original release, a bare state dict) is ``--model`` or grootv_tiny, with defaults.
    """
    config = meta.get("config")
    if not isinstance(config, dict):
        return model or "grootv_tiny", {}
    saved = config.get("model")
    complete = (isinstance(saved, dict) and saved.get("name")
                and isinstance(saved.get("kwargs", {}), (dict, type(None))))
    if not complete:
        if model:
            return model, {}
        raise UserError(f"--checkpoint {checkpoint}: its saved config lacks model.name / "
                        "model.kwargs, so the model it was trained as cannot be rebuilt; pass "
                        "--model NAME to evaluate it as NAME with default options")
    if model and model != saved["name"]:
        return model, {}
    return saved["name"], dict(saved.get("kwargs") or {})


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
    p.set_defaults(func=cli_command("demo")(run_demo))


def run_demo(args) -> int:
    import time

    from grootvl.data import prepare_digits_folder
    from grootvl.engine.progress import read_jsonl
    from grootvl.engine.trainer import LOG_FILE, run_training

    start = time.perf_counter()
    output = Path(args.output or "runs/demo")
    data_dir = Path(args.data_dir) if args.data_dir else output / "data"
    args.data = str(data_dir)  # resolve_config maps it to data.path
    cfg = resolve_config(args)
    if args.print_config:
        from grootvl.engine.config import dump_config

        print(dump_config(cfg), end="")
        return 0
    prepare_digits_folder(cfg["data"]["path"], size=cfg["data"]["img_size"])
    if args.resume is None and (output / LOG_FILE).exists():
        (output / LOG_FILE).unlink()  # a fresh demo run starts a fresh log
    summary = run_training(cfg, output, resume=args.resume, crash_at_step=args.simulate_crash_at_step)
    train_time = summary["run_time_s"]
    epochs = [r for r in read_jsonl(output / LOG_FILE) if r.get("event") == "epoch"]
    curve = output / "training_curve.png"
    plot_training_curve(epochs, curve)
    tree_png = output / "tree.png"
    _demo_tree_figure(cfg, output, tree_png)
    last = epochs[-1]
    metrics = {
        "test_accuracy": last.get("val_top1"), "test_loss": last.get("val_loss"),
        "best_test_accuracy": summary["best_top1"], "test_images": last.get("val_count"),
        "model": cfg["model"]["name"], "model_kwargs": cfg["model"]["kwargs"],
        "epochs": [{k: r.get(k) for k in ("epoch", "train_loss", "val_loss", "val_top1", "val_top5",
                                          "lr", "epoch_time_s")} for r in epochs],
        "train_time_s": train_time, "wall_time_s": round(time.perf_counter() - start, 2),
        "checkpoint": str(output / "last.pth"), "training_curve": str(curve),
        "tree_figure": str(tree_png),
    }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"demo: test accuracy {metrics['test_accuracy']:.2f}% after {len(epochs)} epochs, "
          f"wall time {metrics['wall_time_s']:.0f} s; wrote {output}/metrics.json, "
          f"training_curve.png, tree.png, last.pth", file=sys.stderr)
    return 0


def plot_training_curve(epochs: list[dict], path: Path) -> None:
    """Loss (train, test) and test accuracy per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["epoch"] + 1 for r in epochs]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(x, [r.get("train_loss") for r in epochs], "o-", label="train (smoothed labels)")
    ax_loss.plot(x, [r.get("val_loss") for r in epochs], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    ax_acc.plot(x, [r.get("val_top1") for r in epochs], "s-", color="C1")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="test accuracy")
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _demo_tree_figure(cfg: dict, output: Path, path: Path) -> None:
    """tree.png for the first test digit, with the trained weights."""
    from grootvl.data import ImageFolderDataset, build_transform
    from grootvl.engine.weights import create_model, load_weights
    from grootvl.visualize import render_tree_figure

    dcfg = cfg["data"]
    ds = ImageFolderDataset(Path(dcfg["path"]) / dcfg["val_split"],
                            transform=build_transform(dcfg, cfg["aug"], is_training=False))
    model = create_model(cfg["model"]["name"], len(ds.classes), dcfg["in_chans"],
                         **(cfg["model"]["kwargs"] or {}))
    load_weights(model, output / "last.pth", model_name=cfg["model"]["name"])
    image, target, _ = ds[0]
    render_tree_figure(model, image, ds.load(ds.samples[0][0]), path, stage=0, block=0,
                       title=f"test digit '{ds.classes[target]}'")
