"""Tree scan speed and memory at the GrootV-T stage-1 shape, against simple yardsticks.

Prints, with targets and PASS/MISS:
  * scan forward / one elementwise pass ``x * decay + x`` on the same tensors (<= 1.5)
  * scan forward+backward / the same elementwise pass (<= 4)
  * tree construction per image / SciPy per image (from benchmarks/bench_tree.py, if present)
  * peak memory that forward+backward allocates beyond its inputs, in multiples of x (<= 4)
  * a TreeSSM layer forward (CPU inference) with each scan topology option, relative to the
    default (topology "tree", root "all", cost "cosine"); no target, for the record
Timings interleave the candidates repeat by repeat and report medians, so machine noise hits
all of them alike. torch and numba are given the same number of threads (--threads).

    python benchmarks/bench_ops.py [--batch 8 --size 56 --channels 160 --impl numba]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import grootvl  # noqa: F401  first: sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP
import torch
from grootvl.layers import TreeSSM
from grootvl.ops import grid_tree, tree_scan


def interleaved_medians(fns: dict, repeats: int, warmup: int = 2
                        ) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall seconds and median CPU seconds (all threads) of each callable, running
    them in turn `repeats` times. CPU time is much less sensitive to a loaded machine.
    The order rotates every repeat: a call that follows one touching the same tensors finds
    them in cache, and no candidate should always get (or miss) that advantage."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    names = list(fns)
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            fn = fns[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return ({name: statistics.median(ts) for name, ts in wall.items()},
            {name: statistics.median(ts) for name, ts in cpu.items()})


def peak_cpu_bytes(fn) -> int:
    """Peak bytes that `fn` has allocated through torch's CPU allocator (net of frees).

    Replays the allocation and free events recorded by the profiler in time order.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]"]
    if not events:
        raise RuntimeError("the profiler recorded no memory events; cannot measure peak memory")
    live = peak = 0
    for _, nbytes in sorted(events):
        live += nbytes
        peak = max(peak, live)
    return peak


def _verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "MISS"


def tree_construction_ratio(batch: int, channels: int, size: int) -> str:
    """Report of the tree construction benchmark (benchmarks/bench_tree.py), if present."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from bench_tree import format_result, measure_tree_construction
    except ImportError as err:
        return f"tree construction / SciPy per image: SKIPPED ({err})"
    return format_result(measure_tree_construction(batch=batch, channels=channels,
                                                   height=size, width=size))


TOPOLOGY_OPTIONS = {
    "tree (default)": {}, "tree, cost l2": dict(tree_cost="l2"), "tree, cost l1": dict(tree_cost="l1"),
    "tree, root first": dict(root="first"), "tree, root last": dict(root="last"),
    "raster": dict(topology="raster"), "raster, root last": dict(topology="raster", root="last"),
    "cross": dict(topology="cross"), "cross, root last": dict(topology="cross", root="last"),
    "random": dict(topology="random"),
}


def topology_costs(batch: int, size: int, d_model: int, repeats: int) -> None:
    """Print each topology option's layer forward time (CPU inference) / the default's."""
    torch.manual_seed(0)
    layers = {name: TreeSSM(d_model, **kwargs).eval() for name, kwargs in TOPOLOGY_OPTIONS.items()}
    state = next(iter(layers.values())).state_dict()
    for layer in layers.values():
        layer.load_state_dict(state)
    x = torch.randn(batch, size, size, d_model)

    def forward(layer):
        def run():
            with torch.inference_mode():
                return layer(x)
        return run

    med, cpu = interleaved_medians({name: forward(layer) for name, layer in layers.items()},
                                   repeats)
    base, base_cpu = med["tree (default)"], cpu["tree (default)"]
    print(f"TreeSSM({d_model}) forward, CPU inference, x {tuple(x.shape)}, median of {repeats}; "
          f"time / the default (tree, all roots, cosine) = {base * 1e3:.1f} ms:")
    for name in layers:
        print(f"  {name:<18} {med[name] / base:5.2f}  ({med[name] * 1e3:6.1f} ms; in CPU time "
              f"{cpu[name] / base_cpu:.2f})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=56, help="grid side: L = size^2")
    parser.add_argument("--channels", type=int, default=160)
    parser.add_argument("--impl", default=None, help="tree_scan impl (default: fastest)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-tree", action="store_true", help="skip tree construction")
    parser.add_argument("--skip-topologies", action="store_true",
                        help="skip the layer forward per scan topology option")
    parser.add_argument("--d-model", type=int, default=80,
                        help="TreeSSM width for the topology timings (GrootV-T stage 1: 80)")
    args = parser.parse_args(argv)

    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(args.threads)  # after numba: starting its thread pool resets torch's
    B, S, C = args.batch, args.size, args.channels
    L = S * S
    print(f"shape B={B} L={L} ({S}x{S}) C={C} float32; torch threads "
          f"{torch.get_num_threads()}, numba threads {numba.get_num_threads()}; impl "
          f"{args.impl or 'default'}")

    gen = torch.Generator().manual_seed(0)
    tree = grid_tree(torch.randn(B, 16, S, S, generator=gen))
    x = torch.randn(B, L, C, generator=gen)
    decay = torch.rand(B, L, C, generator=gen) * 0.9 + 0.1
    grad = torch.randn(B, L, C, generator=gen)
    x.requires_grad_(True)
    decay.requires_grad_(True)

    def elementwise():
        with torch.no_grad():
            return x * decay + x

    def forward():
        with torch.no_grad():
            return tree_scan(x, decay, tree, impl=args.impl)

    def forward_backward():
        x.grad = decay.grad = None
        tree_scan(x, decay, tree, impl=args.impl).backward(grad)

    med, cpu = interleaved_medians({"elementwise": elementwise, "forward": forward,
                                    "forward+backward": forward_backward}, args.repeats)
    base, base_cpu = med["elementwise"], cpu["elementwise"]
    for name, target in (("forward", 1.5), ("forward+backward", 4.0)):
        ratio = med[name] / base
        print(f"scan {name} / elementwise: {ratio:.2f} ({med[name] * 1e3:.2f} ms vs "
              f"{base * 1e3:.2f} ms; target <= {target}) {_verdict(ratio, target)}; "
              f"in CPU time {cpu[name] / base_cpu:.2f}")

    x.grad = decay.grad = None
    peak = peak_cpu_bytes(forward_backward) / (x.numel() * x.element_size())
    print(f"peak memory of forward+backward beyond inputs: {peak:.2f} x size(x) "
          f"(target <= 4) {_verdict(peak, 4.0)}")
    if not args.skip_tree:
        print(tree_construction_ratio(B, C, S))
    if not args.skip_topologies:
        topology_costs(B, S, args.d_model, args.repeats)


if __name__ == "__main__":
    main()
