"""``grootvl benchmark``, ``grootvl visualize`` and ``grootvl flops``: look inside a model."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grootvl.errors import UserError

from .common import (cli_command, options_validator, output_file, output_folder,
                     print_json_result, write_text_file)

_MODEL_FLAGS = {"num_classes": "--num-classes", "in_chans": "--in-chans"}


def register(subparsers) -> None:
    _register_benchmark(subparsers)
    _register_visualize(subparsers)
    _register_flops(subparsers)


def _model_options(p: argparse.ArgumentParser, from_checkpoint: bool = False) -> None:
    """--model/--num-classes/--in-chans/--set; ``from_checkpoint``: unset values come from the
    --checkpoint's saved config (see :func:`_visualized_model`), then the usual defaults."""
    defaults = {"model": "grootv_tiny", "num_classes": 1000, "in_chans": 3}
    shown = {k: f"the checkpoint's, else {v}" if from_checkpoint else v for k, v in defaults.items()}
    if from_checkpoint:
        defaults = dict.fromkeys(defaults)
    p.add_argument("--model", default=defaults["model"],
                   help=f"timm model name (default: {shown['model']})")
    p.add_argument("--num-classes", type=int, default=defaults["num_classes"],
                   help=f"default: {shown['num_classes']}")
    p.add_argument("--in-chans", type=int, default=defaults["in_chans"],
                   help=f"default: {shown['in_chans']}")
    p.add_argument("--set", dest="model_kwargs", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model keyword argument (YAML value), e.g. --set tree_sharing=stage")


def _build_model(args):
    from grootvl.engine.config import parse_override
    from grootvl.models.factory import create_model

    kwargs = dict(parse_override(text) for text in args.model_kwargs)
    return create_model(args.model, args.num_classes, args.in_chans, **kwargs)


# ---------------------------------------------------------------------------------- benchmark

def _register_benchmark(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark", help="inference and training throughput (img/s) and peak memory",
        description="Time forward passes (inference, no grad) and forward+backward+optimizer "
        "steps (training) on random images. Peak memory is the CUDA allocator's peak on GPU and "
        "the process's peak resident set size on CPU (which includes everything loaded).")
    _model_options(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--mode", choices=["inference", "train", "both"], default="both")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--iters", type=int, default=10, help="timed iterations")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    p.set_defaults(func=cli_command("benchmark")(run_benchmark), validate=options_validator(
        "BenchmarkOptions", {**_MODEL_FLAGS, "batch_size": "--batch-size",
                             "img_size": "--img-size", "warmup": "--warmup", "iters": "--iters"}))


def _peak_memory_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux (bytes on macOS)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def benchmark_model(model, *, batch_size: int, img_size: int, in_chans: int, mode: str,
                    device, amp, warmup: int, iters: int, channels_last: bool = False) -> dict:
    """img/s, ms per batch and peak memory for ``mode`` ('inference' or 'train')."""
    import time

    import torch

    from grootvl.engine.amp import autocast, make_grad_scaler
    from grootvl.engine.optim import build_optimizer
    from grootvl.engine.schema import OptimConfig

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    x = torch.randn(batch_size, in_chans, img_size, img_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if mode == "inference":
        model.eval()

        def step():
            with torch.no_grad(), autocast(amp):
                model(x)
    else:
        model.train()
        target = torch.randint(0, 2, (batch_size,), device=device)
        opt = build_optimizer(model, OptimConfig(), 1e-6)  # the training engine's AdamW
        scaler = make_grad_scaler(amp)

        def step():
            with autocast(amp):
                loss = torch.nn.functional.cross_entropy(model(x).float(), target)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    elapsed = time.perf_counter() - start
    return {"mode": mode, "img_per_s": round(batch_size * iters / elapsed, 2),
            "ms_per_batch": round(1000 * elapsed / iters, 2),
            "peak_memory_mb": round(_peak_memory_mb(device), 1)}


def run_benchmark(args) -> int:
    import torch

    from grootvl.engine.amp import resolve_amp
    from grootvl.engine.distributed import resolve_device

    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)
    if args.json_out:
        output_file(args.json_out, "--json")
    model = _build_model(args).to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    modes = ["inference", "train"] if args.mode == "both" else [args.mode]
    base = {"model": args.model, "batch_size": args.batch_size, "img_size": args.img_size,
            "device": str(device), "device_name": _device_name(device), "amp": amp.name,
            "threads": torch.get_num_threads(),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}
    results = []
    for mode in modes:
        try:
            res = benchmark_model(model, batch_size=args.batch_size, img_size=args.img_size,
                                  in_chans=args.in_chans, mode=mode, device=device, amp=amp,
                                  warmup=args.warmup, iters=args.iters,
                                  channels_last=args.channels_last)
        except torch.OutOfMemoryError as exc:
            raise UserError(f"out of memory at --batch-size {args.batch_size} ({mode}); lower it "
                            "or add --grad-checkpointing / --amp bf16") from exc
        results.append({**base, **res})
        print(json.dumps(results[-1]))
    if args.json_out:
        write_text_file(json.dumps(results, indent=2), args.json_out, "--json")
    return 0


def _device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


# -------------------------------------------------------------------------------------- flops

def _register_flops(subparsers) -> None:
    p = subparsers.add_parser(
        "flops", help="parameters and FLOPs of a model (fvcore convention)",
        description="Count parameters and FLOPs at an input size with "
        "grootvl.flops.count_flops_params: fvcore's default counting (one multiply-add = one "
        "FLOP) of convolutions, linear layers, matmuls, einsums and norms; the tree "
        "construction and tree scan work is reported separately.")
    _model_options(p)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--json", dest="json_out", help="also write the result to this JSON file")
    p.set_defaults(func=cli_command("flops")(run_flops), validate=options_validator(
        "FlopsOptions", {**_MODEL_FLAGS, "img_size": "--img-size"}))


def run_flops(args) -> int:
    import dataclasses
    import warnings

    from grootvl.flops import count_flops_params

    if args.json_out:
        output_file(args.json_out, "--json")
    model = _build_model(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fvcore's tracer warnings are noise here
        report = count_flops_params(model, (args.in_chans, args.img_size, args.img_size))
    fields = {k: v for k, v in dataclasses.asdict(report).items()
              if k not in ("layer_shapes", "layer_options")}
    print(report.summary(), file=sys.stderr)
    print_json_result({"model": args.model, **fields}, args.json_out)
    return 0


# ---------------------------------------------------------------------------------- visualize

def _register_visualize(subparsers) -> None:
    p = subparsers.add_parser(
        "visualize", help="draw the spanning tree a GrootV block builds over an image (PNG)",
        description="Run a GrootV model on an image, capture one block's tree SSM (hooks), and "
        "draw (left) the input, (middle) the minimum spanning tree the block built and (right) "
        "the propagation weights S(p, .) from a chosen pixel p as a heat map: the tree scan of "
        "a one-hot input at p with the block's own decays, averaged over channels. Without "
        "--image, uses the sample images scikit-learn ships (china.jpg, flower.jpg).")
    p.add_argument("--image", action="append", default=[],
                   help="image file (repeatable); default: scikit-learn's sample images")
    p.add_argument("--output", default="runs/visualize", help="folder for the PNGs")
    p.add_argument("--checkpoint", help="weights to load (default: random init, whose tree "
                   "already follows local colour similarity)")
    p.add_argument("--use-ema", action="store_true", help="load the checkpoint's EMA weights")
    _model_options(p, from_checkpoint=True)
    p.add_argument("--img-size", type=int, help="model input size (square resize; default: the "
                   "checkpoint's, else 224)")
    p.add_argument("--stage", type=int, default=0, help="stage index (default: %(default)s)")
    p.add_argument("--block", type=int, default=0, help="block index within the stage")
    p.add_argument("--pixel", type=float, nargs=2, metavar=("ROW", "COL"),
                   help="source pixel p as fractions of height and width in [0, 1] "
                   "(default: 0.5 0.5, the centre)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cli_command("visualize")(run_visualize), validate=options_validator(
        "VisualizeOptions", {**_MODEL_FLAGS, "img_size": "--img-size", "stage": "--stage",
                             "block": "--block", "pixel": "--pixel"}))


def _visualized_model(args):
    """The model to draw and its input normalisation. With a ``grootvl train`` checkpoint it is
    the model the run trained (``model.name`` and ``model.kwargs``, classes, input channels,
    size and normalisation of its saved config, validated like any config); options given on
    the command line win."""
    from grootvl.engine.config import parse_override
    from grootvl.models.factory import create_model
    from grootvl.models.weights import load_weights

    kwargs = dict(parse_override(text) for text in args.model_kwargs)
    name, saved, data, classes = args.model or "grootv_tiny", {}, None, None
    if args.checkpoint:
        from grootvl.engine.snapshots import read_snapshot_meta
        from grootvl.tasks.classification import eval_model_spec
        from grootvl.tasks.config import config_from_snapshot

        meta = read_snapshot_meta(args.checkpoint)
        name, saved = eval_model_spec(meta, args.model, args.checkpoint)
        if isinstance(meta.get("config"), dict):
            data = config_from_snapshot(meta, args.checkpoint).data
        classes = len(meta["classes"]) if meta.get("classes") else None
    args.in_chans = args.in_chans or (data.in_chans if data else 3)
    args.img_size = args.img_size or (data.img_size if data else 224)
    model = create_model(name, args.num_classes or classes or 1000, args.in_chans,
                         **{**saved, **kwargs})
    if args.checkpoint:
        load_weights(model, args.checkpoint, use_ema=args.use_ema, model_name=name)
    return model, {"mean": data.mean, "std": data.std} if data else {}


def run_visualize(args) -> int:
    from grootvl import visualize as V
    from grootvl.engine.distributed import resolve_device

    out_dir = output_folder(args.output, "--output")
    images = V.load_images(args.image)
    model, normalise = _visualized_model(args)
    model.to(resolve_device(args.device))
    for name, pil in images:
        tensor = V.preprocess(pil, args.img_size, in_chans=args.in_chans, **normalise)
        path = out_dir / f"{Path(name).stem}_stage{args.stage}_block{args.block}.png"
        V.render_tree_figure(model, tensor, pil.resize((args.img_size, args.img_size)), path,
                             stage=args.stage, block=args.block,
                             pixel=tuple(args.pixel) if args.pixel else None, title=name)
        print(path)
    return 0
