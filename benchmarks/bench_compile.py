"""torch.compile on the CPU: compile time, and compiled vs eager inference and training steps.

    python benchmarks/bench_compile.py [--batch 8] [--size 224] [--rounds 5] [--regional]

GrootV-T with random weights (nothing is downloaded). Eager inference runs grootvl's CPU
inference path (fused numba element-wise kernels); compiled inference runs the torch
compositions of the same stages, fused by Inductor. A training step is forward, cross-entropy,
backward and an AdamW step. The model is compiled with ``grootvl.models.compile.compile_model``
(default ``torch.compile`` arguments; ``--regional``: each GrootV block on its own). Compile
time is the first call's time minus a warm eager call's; the timed calls alternate between
eager and compiled (so load from other processes hits both alike) and the medians are
compared. CPU time (all threads of this process) is printed too: on a shared machine it is
steadier than wall-clock time.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import timm
import torch

import grootvl  # noqa: F401  registers grootv_*
from grootvl.models.compile import compile_model


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _compare(name: str, eager_step, compiled_step, rounds: int) -> None:
    eager_step()  # warm: numba kernels, allocator
    first_eager, _ = _timed(eager_step)
    first, _ = _timed(compiled_step)  # compiles
    _timed(compiled_step)  # a second shape-identical call settles any recompilation
    times = {"eager": [], "compiled": []}
    cpu = {"eager": [], "compiled": []}
    for _ in range(rounds):
        for key, step in (("eager", eager_step), ("compiled", compiled_step)):
            wall, used = _timed(step)
            times[key].append(wall)
            cpu[key].append(used)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"{name}:")
    print(f"  compile time       {max(first - first_eager, 0.0):8.1f} s  (first compiled call "
          f"{first:.1f} s, an eager call {first_eager:.2f} s)")
    for key in ("eager", "compiled"):
        print(f"  {key:8s} {med[key] * 1e3:10.1f} ms/step [{min(times[key]) * 1e3:.1f}]  "
              f"CPU time {med_cpu[key] * 1e3:.0f} ms")
    paired = statistics.median(c / e for c, e in zip(times["compiled"], times["eager"]))
    print(f"  compiled / eager = {med['compiled'] / med['eager']:.2f} (per-round median "
          f"{paired:.2f}, CPU-time ratio {med_cpu['compiled'] / med_cpu['eager']:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="grootv_tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--regional", action="store_true", help="compile each GrootV block separately")
    parser.add_argument("--skip", choices=["inference", "train"], help="leave one part out")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"CPU, {torch.get_num_threads()} threads, {args.model}, batch {args.batch}, "
          f"{args.size}x{args.size}, float32, torch {torch.__version__}, "
          f"{'regional' if args.regional else 'whole-model'} compilation, {args.rounds} rounds")
    x = torch.randn(args.batch, 3, args.size, args.size)
    if args.skip != "inference":
        eager = timm.create_model(args.model).eval()
        compiled = compile_model(copy.deepcopy(eager), regional=args.regional)

        def infer(model):
            def step():
                with torch.inference_mode():
                    model(x)
            return step

        _compare("inference (inference_mode)", infer(eager), infer(compiled), args.rounds)
    if args.skip != "train":
        target = torch.randint(0, 1000, (args.batch,))
        eager = timm.create_model(args.model).train()
        compiled = compile_model(copy.deepcopy(eager), regional=args.regional)

        def train(model):
            opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

            def step():
                loss = torch.nn.functional.cross_entropy(model(x), target)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return step

        _compare("training step (forward, backward, AdamW)", train(eager), train(compiled), args.rounds)


if __name__ == "__main__":
    main()
