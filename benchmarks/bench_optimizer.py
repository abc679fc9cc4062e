"""The training engine's optimizer step: torch's per-tensor loop against its fused update.

    python benchmarks/bench_optimizer.py [--threads 2] [--rounds 15]
                                         [--models grootv_tiny,convnext_tiny,demo]

For each model, the optimizer the engine builds (``grootvl.engine.optim.build_optimizer``,
the default ``optim`` section: timm's AdamW with weight decay) once with ``optim.fused=false``
(torch's loop over parameter tensors, what a bare ``torch.optim.AdamW`` does on the CPU) and
once with the default (fused where torch has it), stepping over the same gradients. The two
alternate round by round in a shuffled order (``bench_models.interleaved``); the script prints
the median step of each and their ratio, measured side by side in one process. ``demo`` is
the model of ``grootvl demo`` (``configs/demo.yaml``).
The gradient clipping and EMA update that the engine runs around the step are the same for
both and not timed.
"""
from __future__ import annotations

import argparse
import statistics

import timm
import torch

import grootvl  # noqa: F401  (registers the GrootV models)
from bench_models import interleaved
from grootvl.engine.optim import build_optimizer
from grootvl.tasks import load_config


def _model(name: str) -> torch.nn.Module:
    if name == "demo":
        cfg = load_config("demo")
        return timm.create_model(cfg.model.name, num_classes=10, **cfg.model.kwargs)
    return timm.create_model(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rounds", type=int, default=15, help="timed steps per variant")
    parser.add_argument("--models", default="grootv_tiny,convnext_tiny,demo",
                        help="comma-separated timm names, or demo (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    optim_cfg = load_config(None).optim
    print(f"optimizer step, torch {torch.__version__}, {args.threads} threads, "
          f"{args.rounds} rounds (median ms)")
    print(f"{'model':16s} {'tensors':>7s} {'loop':>8s} {'fused':>8s} {'loop/fused':>10s}")
    for name in args.models.split(","):
        model = _model(name)
        generator = torch.Generator().manual_seed(0)
        for param in model.parameters():
            param.grad = torch.randn(param.shape, generator=generator) * 1e-3
        variants = {fused: build_optimizer(model, optim_cfg.model_copy(update={"fused": fused}),
                                           1e-4) for fused in (False, None)}
        # one warm-up step each: state (moments) allocated, kernels warm
        times, _, _ = interleaved({fused: opt.step for fused, opt in variants.items()},
                                  args.rounds)
        loop, fused = (statistics.median(times[k]) * 1e3 for k in (False, None))
        count = sum(1 for _ in model.parameters())
        print(f"{name:16s} {count:7d} {loop:8.1f} {fused:8.1f} {loop / fused:9.2f}x")


if __name__ == "__main__":
    main()
