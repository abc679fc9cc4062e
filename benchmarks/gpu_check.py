"""One script for a lent GPU: kernel correctness on CUDA, then the speed figures of issue #5.

    python benchmarks/gpu_check.py [--json results.json]       # CUDA; fits 5 min on an H100
    python benchmarks/gpu_check.py --device cpu --interpret    # dry run of every code path:
                                                               # tiny shapes, Triton interpreter
    python benchmarks/gpu_check.py --only figures,models       # rerun some sections
Part 1 (CHECK lines, OK/FAIL): the Triton scan (forward and backward, "full" and "subtree",
float32 and bfloat16 inputs, through the public ``tree_scan``) against the dense oracle; the
memory-lean ``selective_tree_scan`` on the device (torch stages, Triton scan) against the plain
autograd composition it replaces (values and every gradient); the
raw kernels at the benchmark shape against the CPU numba scan; device tree construction
(torch Boruvka + BFS) against the CPU numba path (same MST edge sets, same parents).
Part 2 (FIGURE lines, PASS/MISS against the target, medians after warm-up, CUDA events):
  scan forward / device-to-device copy of x at B=64, 56x56, C=160        target <= 3
  scan forward+backward / the same copy                                  target <= 8
  grid_tree on the device for that batch / scan forward                  (no target)
  launch-configuration sweep of the raw kernels                          (informative)
  GrootV-T vs timm convnext_tiny img/s: training (batch 64, bf16 autocast, the engine's AdamW) and
  inference (batch 128, bf16 autocast)          target: GrootV-T inference >= 0.6x ConvNeXt-T
  and the CUDA allocator's training peak memory of both (batch 64)
  GrootV-T training img/s compiled (grootvl.models.compile.compile_model, default torch.compile) vs
  eager, and the compile time                   (no target; the dry run uses the aot_eager
                                                backend: Inductor's CPU build takes minutes)
Exit status 1 if any CHECK failed. A section that raises prints ERROR and the rest still runs;
sections past the time budget (--budget-s) are skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback


SECTIONS = ("oracle", "lean", "scale", "tree", "figures", "models", "compile", "sweep")


def _parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--interpret", action="store_true",
                   help="run the Triton kernels in the interpreter (needed for --device cpu)")
    p.add_argument("--json", default=None, help="also write all results to this file")
    p.add_argument("--budget-s", type=float, default=270.0,
                   help="skip remaining sections once this much time has passed")
    p.add_argument("--only", default=None,
                   help="comma-separated sections to run: " + ",".join(SECTIONS))
    return p.parse_args()


ARGS = _parse_args()
if ARGS.interpret:  # read when triton kernels are defined: set before anything imports triton
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

import grootvl  # noqa: E402,F401  (registers the GrootV models with timm)
from grootvl.engine.optim import build_optimizer  # noqa: E402
from grootvl.engine.schema import OptimConfig  # noqa: E402
from grootvl.ops import (bfs_tree, grid_edges, grid_tree, minimum_spanning_tree,  # noqa: E402
                         tree_scan)
from grootvl.ops import scan_numba, scan_triton  # noqa: E402
from grootvl.ops.tree import grid_edge_costs, random_tree_edges  # noqa: E402

DEVICE = torch.device(ARGS.device)
DRY = DEVICE.type == "cpu"
START = time.perf_counter()
RESULTS: dict = {"device": None, "checks": {}, "figures": {}, "sweep": {}, "models": {}}
FAILED: list[str] = []

# Shapes: the real ones on CUDA, tiny ones for the CPU dry run (the interpreter is slow).
CHECK_SHAPE = (2, 4, 5, 5) if DRY else (2, 12, 12, 40)        # B, H, W, C for the oracle
BENCH_SHAPE = (2, 8, 8, 8) if DRY else (64, 56, 56, 160)      # B, H, W, C for the figures
MODEL = dict(train_batch=2, infer_batch=2, image=64, warmup=1, reps=2) if DRY else \
    dict(train_batch=64, infer_batch=128, image=224, warmup=3, reps=10)
OP_REPS, OP_WARMUP = (2, 1) if DRY else (20, 5)
SWEEP = [(8, 8, 1), (16, 8, 1)] if DRY else \
    [(16, 16, 1), (16, 32, 2), (32, 16, 2), (32, 32, 4), (64, 16, 4), (64, 32, 4), (32, 64, 4)]


def _elapsed() -> float:
    return time.perf_counter() - START


def run_section(name: str, fn, min_left_s: float = 0.0) -> None:
    """Run one section; print ERROR instead of raising; skip it when out of time."""
    left = ARGS.budget_s - _elapsed()
    if left < min_left_s:
        print(f"SKIP  {name}: {left:.0f}s of the time budget left, needs ~{min_left_s:.0f}s")
        return
    print(f"\n== {name}  (t={_elapsed():.0f}s)", flush=True)
    try:
        fn()
    except Exception as err:  # keep going: later sections are independent
        FAILED.append(name)
        print(f"ERROR {name}: {type(err).__name__}: {err}")
        traceback.print_exc(limit=4)


def check(name: str, ok: bool, detail: str) -> None:
    RESULTS["checks"][name] = {"ok": bool(ok), "detail": detail}
    if not ok:
        FAILED.append(name)
    print(f"CHECK {'OK  ' if ok else 'FAIL'} {name}: {detail}", flush=True)


def figure(name: str, value: float, unit: str, target: str | None = None) -> None:
    """Print a measured figure; target like '<= 3' or '>= 0.6' adds PASS/MISS."""
    verdict = ""
    if target is not None:
        op, bound = target.split()
        hit = value <= float(bound) if op == "<=" else value >= float(bound)
        verdict = ("PASS" if hit else "MISS") + f" (target {target})"
        if DRY:
            verdict += " [dry run: not meaningful]"
    RESULTS["figures"][name] = {"value": value, "unit": unit, "target": target,
                                "verdict": verdict}
    print(f"FIGURE {name}: {value:.4g} {unit}  {verdict}", flush=True)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------- timing

def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def medians(fns: dict, reps: int = OP_REPS, warmup: int = OP_WARMUP) -> dict[str, float]:
    """Median seconds per call of each callable, interleaved rep by rep (CUDA events on GPU)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync()
    times: dict[str, list] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            if DEVICE.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                fn()
                end.record()
                times[name].append((start, end))
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    _sync()
    out = {}
    for name, ts in times.items():
        if DEVICE.type == "cuda":
            ts = [s.elapsed_time(e) / 1e3 for s, e in ts]
        out[name] = statistics.median(ts)
    return out


# ------------------------------------------------------------------------------- inputs

def random_tree(batch: int, num_vertices: int, generator: torch.Generator):
    """Random recursive trees (wide levels: several tiles per level) via the device BFS."""
    edges = random_tree_edges(batch, num_vertices, generator)
    return bfs_tree(edges.to(DEVICE), num_vertices, root=0, impl="torch")


def scan_inputs(B: int, L: int, C: int, generator: torch.Generator):
    x = torch.randn(B, L, C, generator=generator)
    decay = torch.exp(-torch.rand(B, L, C, generator=generator) * 2)  # in (e^-2, 1]
    return x.to(DEVICE), decay.to(DEVICE)


# ------------------------------------------------------------------------------- part 1

def part1_scan_vs_oracle() -> None:
    from grootvl.ops.tree_scan import default_impl

    if DEVICE.type == "cuda":
        impl = default_impl(DEVICE)
        check("default impl on CUDA", impl == "triton", f"default_impl(cuda) = {impl!r}")
    gen = torch.Generator().manual_seed(0)
    B, H, W, C = CHECK_SHAPE
    trees = {"grid": grid_tree(torch.randn(B, 8, H, W, generator=gen).to(DEVICE)),
             "random": random_tree(B, H * W, gen)}
    tols = {torch.float32: 1e-4, torch.bfloat16: 2e-2}  # bf16: output rounding (2^-8)
    for (tname, tree) in trees.items():
        x0, d0 = scan_inputs(B, H * W, C, gen)
        g0 = torch.randn(B, H * W, C, generator=gen).to(DEVICE)
        for mode in ("full", "subtree"):
            for dtype, tol in tols.items():
                x, d, g = x0.to(dtype), d0.to(dtype), g0.to(dtype)
                xr, dr = x.clone().requires_grad_(True), d.clone().requires_grad_(True)
                y = tree_scan(xr, dr, tree, mode, impl="triton")
                gx, gd = torch.autograd.grad(y, (xr, dr), g)
                xq, dq = x.double().requires_grad_(True), d.double().requires_grad_(True)
                y_ref = tree_scan(xq, dq, tree, mode, impl="reference")
                gx_ref, gd_ref = torch.autograd.grad(y_ref, (xq, dq), g.double())
                errs = [rel_err(y, y_ref), rel_err(gx, gx_ref), rel_err(gd, gd_ref)]
                dtypes_ok = all(t.dtype == dtype for t in (y, gx, gd))
                check(f"tree_scan {tname}/{mode}/{str(dtype)[6:]} vs oracle",
                      dtypes_ok and max(errs) < tol,
                      f"rel err y {errs[0]:.1e}, grad_x {errs[1]:.1e}, grad_decay "
                      f"{errs[2]:.1e} (tol {tol:g}); dtypes {'ok' if dtypes_ok else 'WRONG'}")
        # bf16 in, float32 accumulation: raw kernel output against the exact scan.
        xb, db = x0.bfloat16(), d0.bfloat16()
        args = (tree.order, tree.parent, tree.level_offsets)
        y, _ = scan_triton.scan_forward(xb, db, *args, "full")
        y_ref = tree_scan(xb.double(), db.double(), tree, "full", impl="reference")
        err = rel_err(y, y_ref)
        check(f"kernel {tname}/bf16 in accumulates in float32", y.dtype == torch.float32
              and err < 1e-5, f"out dtype {y.dtype}, rel err {err:.1e} (tol 1e-5)")


def part1_lean_op() -> None:
    """selective_tree_scan (training path of TreeSSM) vs the plain autograd composition."""
    import torch.nn.functional as F

    from grootvl.ops.selective_tree_scan import selective_tree_scan
    from grootvl.ops.ssm_elementwise import discretize, ssm_output

    gen = torch.Generator().manual_seed(5)
    B, H, W, D = CHECK_SHAPE
    R, C, L = 3, 16, H * W

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(DEVICE).requires_grad_(True)

    tensors = [rand(B, L, D), rand(B, L, D), rand(R + 2, D, scale=D ** -0.5),
               rand(D, R, scale=R ** -0.5), rand(D, scale=0.5), rand(D, scale=0.5), rand(D),
               rand(D), rand(D), rand(D), rand(D), rand(C, D, scale=D ** -0.5)]
    conv_out, z, wx, wdt, bdt, a_log, skip, hw, hb, ow, ob, wo = tensors
    grad = torch.randn(B, L, C, generator=gen).to(DEVICE)
    trees = [grid_tree(torch.randn(B, 8, H, W, generator=gen).to(DEVICE)), random_tree(B, L, gen)]
    for mode in ("full", "subtree"):
        for count in (1, 2):
            used = trees[:count]
            xs = F.silu(conv_out)
            x_dbl = F.linear(xs, wx)
            u, decay = discretize(x_dbl[..., :R], wdt, bdt, xs, x_dbl[..., R:R + 1],
                                  -torch.exp(a_log))
            h = sum(tree_scan(u, decay, t, mode, impl="triton") for t in used)
            plain = F.linear(ssm_output(h, x_dbl[..., R + 1:], xs, z, skip, (hw, hb, 1e-5),
                                        (ow, ob, 1e-5)), wo)
            ref = torch.autograd.grad(plain, tensors, grad)
            lean = selective_tree_scan(conv_out, z, wx, wdt, bdt, a_log, skip, (hw, hb, 1e-5),
                                       (ow, ob, 1e-5), wo, used, mode, scan_impl="triton",
                                       impl="torch")
            got = torch.autograd.grad(lean, tensors, grad)
            errs = [rel_err(lean, plain)] + [rel_err(g, r) for g, r in zip(got, ref)]
            check(f"selective_tree_scan {mode}, {count} tree(s): torch stages + triton scan vs "
                  f"plain autograd", max(errs) < 1e-4,
                  f"rel err out {errs[0]:.1e}, worst gradient {max(errs[1:]):.1e} (tol 1e-4)")


def part1_kernels_at_scale() -> None:
    """Deep trees (hundreds of levels) and many channel blocks, against the numba scan."""
    gen = torch.Generator().manual_seed(1)
    _, H, W, C = BENCH_SHAPE
    B = 2
    guide = torch.randn(B, C, H, W, generator=gen)
    tree = grid_tree(guide.to(DEVICE))
    cpu = tree.to("cpu")
    x, d = scan_inputs(B, H * W, C, gen)
    g = torch.randn(B, H * W, C, generator=gen)
    dev_args = (tree.order, tree.parent, tree.level_offsets)
    cpu_args = (cpu.order, cpu.parent, cpu.level_offsets)
    for mode in ("full", "subtree"):
        y, up = scan_triton.scan_forward(x, d, *dev_args, mode)
        gx, gd = scan_triton.scan_backward(g.to(DEVICE), d, *dev_args, up, y, mode)
        y_n, up_n = scan_numba.scan_forward(x.cpu(), d.cpu(), *cpu_args, mode)
        gx_n, gd_n = scan_numba.scan_backward(g, d.cpu(), *cpu_args, up_n, y_n, mode)
        errs = [rel_err(a.cpu(), b) for a, b in ((y, y_n), (gx, gx_n), (gd, gd_n))]
        check(f"kernels {mode} at {H}x{W}, C={C}, {tree.level_offsets.shape[1] - 1} levels "
              f"vs numba", max(errs) < 1e-4,
              f"rel err y {errs[0]:.1e}, grad_x {errs[1]:.1e}, grad_decay {errs[2]:.1e}")


def _edge_sets(tree_edges: torch.Tensor) -> list[set]:
    e = tree_edges.cpu().sort(dim=-1).values
    return [set(map(tuple, row.tolist())) for row in e]


def part1_tree_construction() -> None:
    gen = torch.Generator().manual_seed(2)
    B, H, W, C = 4, *BENCH_SHAPE[1:]
    V = H * W
    edges = grid_edges(H, W)
    guides = {"randn": torch.randn(B, C, H, W, generator=gen),
              # few distinct values: many equal costs, so tie-breaking must agree too
              "ties": torch.randint(0, 2, (B, 3, H, W), generator=gen).float()}
    for name, guide in guides.items():
        costs = grid_edge_costs(guide, impl="torch")  # identical costs for both MSTs
        cpu = minimum_spanning_tree(edges, costs, V, impl="numba")
        dev = minimum_spanning_tree(edges.to(DEVICE), costs.to(DEVICE), V, impl="torch")
        same = [a == b for a, b in zip(_edge_sets(cpu), _edge_sets(dev))]
        check(f"MST {name}: device torch vs CPU numba, same costs", all(same),
              f"{sum(same)}/{B} rows with the same edge set")
        t_cpu = grid_tree(guide, impl="numba")
        t_dev = grid_tree(guide.to(DEVICE))
        same_parent = (t_dev.parent.cpu() == t_cpu.parent).all(dim=1)
        same_levels = torch.equal(t_dev.level_offsets.cpu(), t_cpu.level_offsets)
        cost_diff = (grid_edge_costs(guide.to(DEVICE)).cpu()
                     - grid_edge_costs(guide, impl="numba")).abs().max().item()
        check(f"grid_tree {name}: device vs CPU numba", bool(same_parent.all()) and same_levels,
              f"{int(same_parent.sum())}/{B} rows with the same parents, level offsets "
              f"{'equal' if same_levels else 'DIFFER'}; max cost difference {cost_diff:.1e}")


# ------------------------------------------------------------------------------- part 2

def part2_op_figures() -> None:
    gen = torch.Generator().manual_seed(3)
    B, H, W, C = BENCH_SHAPE
    L = H * W
    guide = torch.randn(B, C, H, W, generator=gen).to(DEVICE)
    tree = grid_tree(guide)
    x, d = scan_inputs(B, L, C, gen)
    g = torch.randn(B, L, C, generator=gen).to(DEVICE)
    xr, dr = x.clone().requires_grad_(True), d.clone().requires_grad_(True)
    dst = torch.empty_like(x)
    levels = tree.level_offsets.shape[1] - 1
    print(f"B={B}, {H}x{W}, C={C}: x is {x.numel() * 4 / 2**20:.0f} MiB float32; "
          f"tree depth {levels} levels (mean level {L / levels:.1f} vertices)")
    RESULTS["figures"]["levels"] = levels

    t = medians({
        "copy": lambda: dst.copy_(x),
        "forward": lambda: tree_scan(x, d, tree, "full", impl="triton"),
        "forward+backward": lambda: torch.autograd.grad(
            tree_scan(xr, dr, tree, "full", impl="triton"), (xr, dr), g),
        "forward subtree": lambda: tree_scan(x, d, tree, "subtree", impl="triton"),
        "tree": lambda: grid_tree(guide, impl="torch"),
    })
    for name, sec in t.items():
        print(f"  {name:18s} {sec * 1e3:9.3f} ms")
    print(f"  copy bandwidth {2 * x.numel() * 4 / t['copy'] / 1e9:.0f} GB/s (read + write)")
    figure("scan forward / copy", t["forward"] / t["copy"], "x", "<= 3")
    figure("scan forward+backward / copy", t["forward+backward"] / t["copy"], "x", "<= 8")
    figure("scan forward subtree / copy", t["forward subtree"] / t["copy"], "x")
    figure("grid_tree (device) / scan forward", t["tree"] / t["forward"], "x")
    for name, sec in t.items():
        RESULTS["figures"][f"ms {name}"] = sec * 1e3


def part2_launch_sweep() -> None:
    """Raw kernel times per (BLOCK_V, BLOCK_C, num_warps); the default is marked."""
    gen = torch.Generator().manual_seed(4)
    B, H, W, C = BENCH_SHAPE
    tree = grid_tree(torch.randn(B, C, H, W, generator=gen).to(DEVICE))
    x, d = scan_inputs(B, H * W, C, gen)
    args = (tree.order, tree.parent, tree.level_offsets)
    y, up = scan_triton.scan_forward(x, d, *args, "full")
    default = scan_triton._launch_config(C, None, None, None)
    fns = {}
    for bv, bc, nw in dict.fromkeys(SWEEP + [default]):
        cfg = dict(block_v=bv, block_c=bc, num_warps=nw)
        fns[(bv, bc, nw, "fwd")] = lambda cfg=cfg: scan_triton.scan_forward(x, d, *args, "full",
                                                                            **cfg)
        fns[(bv, bc, nw, "bwd")] = lambda cfg=cfg: scan_triton.scan_backward(
            x, d, *args, up, y, "full", **cfg)
    t = medians(fns, reps=max(2, OP_REPS // 2), warmup=1)
    print("  BLOCK_V BLOCK_C warps   forward ms  backward ms")
    for (bv, bc, nw) in dict.fromkeys(k[:3] for k in t):
        fwd, bwd = t[(bv, bc, nw, "fwd")] * 1e3, t[(bv, bc, nw, "bwd")] * 1e3
        mark = "  <- default" if (bv, bc, nw) == default else ""
        print(f"  {bv:7d} {bc:7d} {nw:5d} {fwd:12.3f} {bwd:12.3f}{mark}")
        RESULTS["sweep"][f"{bv},{bc},{nw}"] = {"forward_ms": fwd, "backward_ms": bwd}


def _throughput(model, batch: int, train: bool) -> tuple[float, int | None]:
    """Images per second, bf16 autocast; training includes backward and an AdamW step. Also
    the CUDA allocator's peak during the steps (weights, gradients, AdamW state, activations);
    None on CPU."""
    size = MODEL["image"]
    images = torch.randn(batch, 3, size, size, device=DEVICE)
    labels = torch.randint(0, 1000, (batch,), device=DEVICE)
    # bf16 autocast on CUDA; the CPU dry run leaves it off (bf16 matmuls crawl on most CPUs).
    autocast = torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=not DRY)
    if train:
        model.train()
        opt = build_optimizer(model, OptimConfig(), 1e-4)  # the training engine's (fused) AdamW

        def step():
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast:
                model(images)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(DEVICE)
    sec = medians({"step": step}, reps=MODEL["reps"], warmup=MODEL["warmup"])["step"]
    peak = torch.cuda.max_memory_allocated(DEVICE) if DEVICE.type == "cuda" else None
    return batch / sec, peak


def part2_models() -> None:
    import timm

    print(f"  image {MODEL['image']}px; training batch {MODEL['train_batch']}, inference "
          f"batch {MODEL['infer_batch']}; " + ("float32 (dry run)" if DRY else
                                               "bf16 autocast (GrootV scans in float32)"))
    if DEVICE.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rates, peaks = {}, {}
    for name in ("grootv_tiny", "convnext_tiny"):
        try:
            model = timm.create_model(name).to(DEVICE)
        except Exception as err:  # the GrootV model may not be there yet: keep the op figures
            print(f"  {name}: not available ({type(err).__name__}: {err}); skipped")
            continue
        for mode, batch in (("train", MODEL["train_batch"]), ("infer", MODEL["infer_batch"])):
            rates[(name, mode)], peak = _throughput(model, batch, train=mode == "train")
            memory = ""
            if mode == "train" and peak is not None:
                peaks[name] = peak
                RESULTS["models"][f"{name} train peak GiB"] = peak / 2**30
                memory = f"  training peak memory {peak / 2**30:.2f} GiB"
            print(f"  {name:14s} {mode:5s} {rates[(name, mode)]:9.4g} img/s{memory}", flush=True)
            RESULTS["models"][f"{name} {mode} img/s"] = rates[(name, mode)]
        del model
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
    for mode, target in (("infer", ">= 0.6"), ("train", None)):
        if ("grootv_tiny", mode) in rates and ("convnext_tiny", mode) in rates:
            figure(f"GrootV-T / ConvNeXt-T {mode} throughput",
                   rates[("grootv_tiny", mode)] / rates[("convnext_tiny", mode)], "x", target)
    if len(peaks) == 2:
        figure(f"GrootV-T / ConvNeXt-T training peak memory (batch {MODEL['train_batch']}: "
               f"{peaks['grootv_tiny'] / 2**30:.2f} vs {peaks['convnext_tiny'] / 2**30:.2f} GiB)",
               peaks["grootv_tiny"] / peaks["convnext_tiny"], "x")
    elif DRY:
        print("  training peak memory: CUDA only (the CPU figure is benchmarks/bench_models.py's)")


def part2_compile() -> None:
    import copy

    import timm

    from grootvl.models.compile import compile_model

    batch = MODEL["train_batch"]
    backend = "aot_eager" if DRY else "inductor"
    torch.manual_seed(0)
    # the dry run traces a four-block GrootV (tracing all 15 blocks takes minutes on a CPU)
    eager = timm.create_model("grootv_tiny", **(dict(depths=(1, 1, 1, 1)) if DRY else {}))
    eager = eager.to(DEVICE)
    compiled = compile_model(copy.deepcopy(eager), backend=backend)
    images = torch.randn(2, 3, MODEL["image"], MODEL["image"], device=DEVICE)
    eager.eval(), compiled.eval()
    with torch.no_grad():  # float32, no autocast: compiled and eager must agree closely
        err = rel_err(compiled(images), eager(images))
    check("compiled GrootV-T forward vs eager (float32)", err < 1e-4, f"max rel err {err:.2e}")
    # the training batch: _throughput then reuses this compiled graph (no recompilation)
    images = torch.randn(batch, 3, MODEL["image"], MODEL["image"], device=DEVICE)
    labels = torch.zeros(batch, dtype=torch.long, device=DEVICE)
    start = time.perf_counter()
    compiled.train()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=not DRY):
        loss = torch.nn.functional.cross_entropy(compiled(images), labels)
    loss.backward()
    _sync()
    figure(f"torch.compile ({backend}) first training step incl. compile", time.perf_counter() - start, "s")
    rates = {name: _throughput(model, batch, train=True)[0]
             for name, model in (("eager", eager), ("compiled", compiled))}
    for name, rate in rates.items():
        print(f"  GrootV-T train {name:8s} {rate:9.4g} img/s (batch {batch})", flush=True)
        RESULTS["models"][f"grootv_tiny train {name} img/s"] = rate
    figure(f"GrootV-T compiled ({backend}) / eager training throughput",
           rates["compiled"] / rates["eager"], "x")


# ------------------------------------------------------------------------------- main

def main() -> int:
    if DEVICE.type == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device; for a dry run use --device cpu --interpret")
            return 2
        RESULTS["device"] = torch.cuda.get_device_name()
    else:
        if not ARGS.interpret:
            print("--device cpu needs --interpret (the Triton kernels run in the interpreter)")
            return 2
        RESULTS["device"] = "cpu (dry run, Triton interpreter)"
    print(f"device: {RESULTS['device']}; torch {torch.__version__}; "
          f"triton {__import__('triton').__version__}")

    only = set(ARGS.only.split(",")) if ARGS.only else set(SECTIONS)
    if only - set(SECTIONS):
        print(f"--only: unknown sections {sorted(only - set(SECTIONS))}; choose from {SECTIONS}")
        return 2
    plan = [("oracle", "part 1: scan vs dense oracle", part1_scan_vs_oracle, 0),
            ("lean", "part 1: memory-lean selective_tree_scan on the device", part1_lean_op, 0),
            ("scale", "part 1: kernels at the benchmark shape vs numba", part1_kernels_at_scale, 0),
            ("tree", "part 1: tree construction on the device vs CPU numba",
             part1_tree_construction, 0),
            ("figures", "part 2: scan and tree figures", part2_op_figures, 20),
            ("models", "part 2: model throughput", part2_models, 60),
            ("compile", "part 2: torch.compile vs eager training", part2_compile, 90),
            ("sweep", "part 2: launch configuration sweep", part2_launch_sweep, 40)]
    for key, title, fn, min_left_s in plan:
        if key in only:
            run_section(title, fn, min_left_s)

    print(f"\ndone in {_elapsed():.0f}s; "
          + (f"FAILED: {', '.join(FAILED)}" if FAILED else "all checks OK"))
    RESULTS["failed"] = FAILED
    RESULTS["seconds"] = _elapsed()
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
