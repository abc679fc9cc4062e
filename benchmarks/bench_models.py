"""GrootV-T against ConvNeXt-T (and MambaOut-T, Swin-T) on CPU: time and training memory.

    python benchmarks/bench_models.py [--batch 8] [--size 224] [--threads 2] [--rounds 7]
                                      [--sections inference,train,saved,peak,grootl,breakdown]
                                      [--keep-freed-memory] [--compile]

Everything is measured in one run, the way a user would: ``import torch`` comes first, random
weights (nothing is downloaded), float32.

* inference: one forward pass per model under ``torch.inference_mode``;
* train: one training step per model (forward, cross-entropy, backward, AdamW step with the
  optimizer of grootvl's training engine: fused where torch has it), models in train mode
  with their default drop-path rates; "grootv_tiny plain" is GrootV-T with
  ``lean_backward`` off (plain autograd through the Tree SSM and MLP: the path before the
  memory-lean ops, same numbers); the step's phases (forward with the loss, backward,
  optimizer step) are printed too, to show which one a ratio comes from;
* saved: the bytes autograd keeps for backward during one training forward pass, counted with
  ``torch.autograd.graph.saved_tensors_hooks`` over unique storages (weights and the input
  images included, for every model alike). This decides the batch that fits in memory;
* peak: the peak resident memory of a training step above the memory the process held
  before it (the second step, in a fresh subprocess per model; glibc told to return large
  freed blocks to the OS at once, so that resident memory follows the memory in use), read
  from /proc (Linux only); with ``--compile`` the models are compiled first
  (``grootvl.models.compile.compile_model``, a minute or two per model), and the peak is
  that of a compiled step;
* grootl: a GrootL forward (chain + tree scan, context 256) against the stock transformers
  Mamba forward it modifies (batch 4, sequence 512, hidden 256);
* breakdown: where GrootV-T's inference time goes (tree construction, tree scans, the rest).

Timed sections alternate between the models round by round, so load from other processes
hits all of them alike; ratios are given as the median of per-round ratios (each round sees
one load level) next to the ratio of medians. The process CPU time is printed too, and the
minor page faults per call: how many of a step's fresh buffers fault depends on what the
process allocated before, and it moves the time ratios by several per cent
(``--keep-freed-memory`` takes that out).
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import statistics
import subprocess
import sys
import time

import torch  # first, as a user's program would
import timm

import grootvl  # noqa: F401  (registers the grootv_* models)
import grootvl.layers.tree_ssm as tree_ssm
from grootvl.engine.optim import build_optimizer
from grootvl.engine.schema import OptimConfig

BASELINE = "convnext_tiny"
MODELS = {  # label: (timm name, kwargs)
    "grootv_tiny": ("grootv_tiny", {}),
    "grootv_tiny stage": ("grootv_tiny", {"tree_sharing": "stage"}),
    # the same model with lean_backward off: plain autograd keeps every intermediate (how
    # GrootV trained before the memory-lean ops; same numbers)
    "grootv_tiny plain": ("grootv_tiny", {}),
    "convnext_tiny": ("convnext_tiny", {}),
    "mambaout_tiny": ("mambaout_tiny", {}),
    "swin_tiny": ("swin_tiny_patch4_window7_224", {}),
}
TARGETS = {"inference": 1.15, "train": 1.1, "saved": 1.15}  # GrootV-T / ConvNeXt-T
GROOTL_TARGET = 1.25  # GrootL forward / Mamba forward
SECTIONS = ("inference", "train", "saved", "peak", "grootl", "breakdown")


def create(label: str, size: int) -> torch.nn.Module:
    name, kwargs = MODELS[label]
    if name.startswith("swin"):
        kwargs = dict(kwargs, img_size=size)
    model = timm.create_model(name, **kwargs)
    if label.endswith(" plain"):
        for module in model.modules():
            if hasattr(module, "lean_backward"):
                module.lean_backward = False
    return model


# ----------------------------------------------------------------------------- timing

def interleaved(steps: dict, rounds: int, warmup: int = 1
                ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[int]]]:
    """Wall-clock seconds, process CPU seconds and minor page faults per call of each step,
    round by round. (A fresh large buffer faults once per 4 KiB page on first touch, which
    can cost as much as the work on it.)

    Each round runs the steps in a new (seeded) order: in a fixed order every step would
    always follow the same other one and inherit its after-effects (caches, the allocator's
    free lists, spinning worker threads), a bias that moved one model's ratio by 5 %.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    wall = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    faults = {name: [] for name in steps}
    shuffler = random.Random(0)
    for _ in range(rounds):
        order = list(steps)
        shuffler.shuffle(order)
        for name in order:
            step = steps[name]
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return wall, cpu, faults


def report(title: str, wall: dict, cpu: dict, faults: dict, baseline: str,
           target_key: str | None) -> dict:
    """Print medians and ratios to the baseline; returns {label: median per-round ratio}."""
    if title:
        print(f"\n{title}")
    med = {k: statistics.median(v) for k, v in wall.items()}
    ratios = {}
    for name, values in wall.items():
        paired = per_round_ratio(values, wall[baseline])
        ratios[name] = paired
        cpu_ratio = statistics.median(cpu[name]) / statistics.median(cpu[baseline])
        print(f"  {name:18s} {med[name] * 1e3:8.0f} ms  [min {min(values) * 1e3:.0f}]  "
              f"x{paired:5.2f} per round, x{med[name] / med[baseline]:.2f} of medians, "
              f"CPU time {statistics.median(cpu[name]) * 1e3:.0f} ms (x{cpu_ratio:.2f}), "
              f"{statistics.median(faults[name]) / 1e3:.0f} K page faults")
    if target_key:
        verdict(f"{target_key}: grootv_tiny / {baseline}", ratios["grootv_tiny"],
                TARGETS[target_key])
    return ratios


def per_round_ratio(values: list[float], baseline: list[float]) -> float:
    """Median of the ratios of values to the baseline's taken round by round."""
    return statistics.median(a / b for a, b in zip(values, baseline))


def verdict(what: str, value: float, target: float) -> None:
    print(f"  => {what} = {value:.2f}  {'PASS' if value <= target else 'MISS'} "
          f"(target <= {target})")


def inference_section(models: dict, x: torch.Tensor, rounds: int) -> None:
    for model in models.values():
        model.eval()

    def forward(model):
        def step():
            with torch.inference_mode():
                model(x)
        return step

    wall, cpu, faults = interleaved({k: forward(m) for k, m in models.items()}, rounds)
    report("Inference (forward under inference_mode), per batch:", wall, cpu, faults, BASELINE,
           "inference")


PHASES = ("forward", "backward", "optimizer")


def training_step(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor,
                  phases: list | None = None):
    """One AdamW training step (zero_grad, forward, cross-entropy, backward, step) with the
    optimizer grootvl's training engine builds (timm's AdamW, torch's fused update); with
    ``phases``, each call appends the wall seconds of its forward (with the loss), backward
    and optimizer step."""
    opt = build_optimizer(model, OptimConfig(), 1e-4)

    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        if phases is not None:
            phases.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
    return step


def train_section(models: dict, x: torch.Tensor, labels: torch.Tensor, rounds: int) -> None:
    phases = {k: [] for k in models}
    steps = {k: training_step(m, x, labels, phases[k]) for k, m in models.items()}
    wall, cpu, faults = interleaved(steps, rounds)
    report("Training step (forward + backward + AdamW step), per batch:", wall, cpu, faults,
           BASELINE,
           "train")
    # where the time goes: the timed rounds only (the warm-up call is dropped)
    print("  phases of the step, median ms (x median per-round ratio to "
          f"{BASELINE}):")
    timed = {k: v[-rounds:] for k, v in phases.items()}
    for name, values in timed.items():
        cells = []
        for i, phase in enumerate(PHASES):
            mine = [v[i] for v in values]
            ratio = per_round_ratio(mine, [v[i] for v in timed[BASELINE]])
            cells.append(f"{phase} {statistics.median(mine) * 1e3:5.0f} (x{ratio:.2f})")
        print(f"    {name:18s} " + ", ".join(cells))
    for model in models.values():  # drop gradients and optimizer state before what follows
        model.zero_grad(set_to_none=True)
    del steps
    gc.collect()


# ----------------------------------------------------------------------------- memory

def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the unique storages autograd saves for backward in one training forward."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(seen.values())


def saved_section(models: dict, x: torch.Tensor) -> None:
    print("\nBytes saved for backward in one training forward pass (unique storages):")
    sizes = {name: saved_bytes(m, x) for name, m in models.items()}
    for name, size in sizes.items():
        print(f"  {name:18s} {size / 2**30:7.3f} GiB  x{size / sizes[BASELINE]:.2f}")
    verdict(f"saved: grootv_tiny / {BASELINE}", sizes["grootv_tiny"] / sizes[BASELINE],
            TARGETS["saved"])


def _memory_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_child(label: str, batch: int, size: int, compile: bool = False) -> None:
    """In a fresh process: peak RSS of a training step above the RSS before it (of a
    ``compile_model`` model with ``compile``)."""
    import ctypes

    # Blocks of 64 KiB and more get their own mappings, returned to the OS when freed (glibc
    # otherwise keeps freed blocks of up to 32 MiB in its heap, and the RSS would not follow
    # the memory in use).
    ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    torch.manual_seed(0)
    model = create(label, size)
    if compile:
        from grootvl.models.compile import compile_model
        model = compile_model(model)
    x = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 1000, (batch,))
    step = training_step(model, x, labels)
    step()  # AdamW state now exists; kernels (and with compile, the graphs) are compiled
    gc.collect()
    before = _memory_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    step()
    print(f"PEAK {(_memory_kib('VmHWM') - before) * 1024}")


def peak_section(args, labels: list[str]) -> None:
    print("\nPeak resident memory of a " + ("compiled " if args.compile else "")
          + "training step above the process's memory before it "
          "(second step in a fresh process per model, large blocks returned to the OS when "
          "freed; gradients, released by zero_grad, are recreated within the step):")
    if not os.path.exists("/proc/self/clear_refs"):
        print("  not measurable here (needs Linux /proc and glibc)")
        return
    peaks = {}
    for label in labels:
        cmd = [sys.executable, __file__, "--peak-child", label, "--batch", str(args.batch),
               "--size", str(args.size), "--threads", str(args.threads)]
        out = subprocess.run(cmd + (["--compile"] if args.compile else []), capture_output=True,
                             text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("PEAK ")]
        if out.returncode or not lines:
            print(f"  {label:18s} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        peaks[label] = int(lines[-1].split()[1])
    for label, peak in peaks.items():
        ratio = f"x{peak / peaks[BASELINE]:.2f}" if BASELINE in peaks else ""
        print(f"  {label:18s} {peak / 2**30:7.3f} GiB  {ratio}")


# ----------------------------------------------------------------------------- GrootL

def grootl_section(rounds: int) -> None:
    from transformers import MambaConfig, MambaForCausalLM

    from grootvl.grootl import enable_tree_scanning

    batch, seq, hidden, context = 4, 512, 256, 256
    config = MambaConfig(vocab_size=256, hidden_size=hidden, num_hidden_layers=2, state_size=16)
    torch.manual_seed(0)
    mamba = MambaForCausalLM(config).eval()
    grootl = MambaForCausalLM(config).eval()
    grootl.load_state_dict(mamba.state_dict())
    enable_tree_scanning(grootl)
    ids = torch.randint(0, 256, (batch, seq))

    def forward(model, **kwargs):
        def step():
            with torch.inference_mode():
                model(ids, **kwargs)
        return step

    # transformers' Mamba takes a different CPU path with a cache (the default: use_cache
    # from the config) than without one; both are timed
    steps = {}
    for cache in (False, True):
        steps[f"mamba, cache {cache}"] = forward(mamba, use_cache=cache)
        steps[f"grootl, cache {cache}"] = forward(grootl, use_cache=cache, context_length=context)
    wall, cpu, faults = interleaved(steps, rounds)
    title = (f"GrootL vs stock Mamba forward (batch {batch}, sequence {seq}, hidden {hidden}, "
             f"2 layers, state 16, context {context}), use_cache False / True:")
    print(f"\n{title}")
    for cache in (False, True):
        pair = {k: v for k, v in wall.items() if k.endswith(str(cache))}
        ratios = report("", pair, {k: cpu[k] for k in pair}, faults, f"mamba, cache {cache}",
                        None)
        verdict(f"grootl / mamba, use_cache={cache}", ratios[f"grootl, cache {cache}"],
                GROOTL_TARGET)


# ----------------------------------------------------------------------------- breakdown

def breakdown(model: torch.nn.Module, x: torch.Tensor, passes: int = 3) -> dict[str, float]:
    """Median seconds per forward pass: tree construction, tree scans, the rest of the Tree
    SSM layers (projections, depthwise conv, element-wise SSM math, norms), everything else."""
    spent = {"tree construction": 0.0, "tree scan": 0.0, "Tree SSM layers": 0.0}
    originals = {"grid_tree": tree_ssm.grid_tree, "tree_scan": tree_ssm.tree_scan}
    def timed(fn, key):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[key] += time.perf_counter() - start
            return out
        return wrapper

    # each layer's forward is wrapped on the instance, not hooked: a forward hook would turn
    # off the in-place residual of its block (grootvl.layers.inplace) and change what is timed
    layers = [m for m in model.modules() if isinstance(m, tree_ssm.TreeSSM)]
    for layer in layers:
        layer.forward = timed(layer.forward, "Tree SSM layers")
    tree_ssm.grid_tree = timed(originals["grid_tree"], "tree construction")
    tree_ssm.tree_scan = timed(originals["tree_scan"], "tree scan")
    rows = []
    try:
        model.eval()
        with torch.inference_mode():
            for _ in range(passes):
                spent.update({k: 0.0 for k in spent})
                start = time.perf_counter()
                model(x)
                total = time.perf_counter() - start
                tree = spent["tree construction"] + spent["tree scan"]
                rows.append({"tree construction": spent["tree construction"],
                             "tree scan": spent["tree scan"],
                             "Tree SSM, other": spent["Tree SSM layers"] - tree,
                             "rest": total - spent["Tree SSM layers"], "total": total})
    finally:
        tree_ssm.grid_tree, tree_ssm.tree_scan = originals["grid_tree"], originals["tree_scan"]
        for layer in layers:
            del layer.forward
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def breakdown_section(model: torch.nn.Module, x: torch.Tensor) -> None:
    parts = breakdown(model, x)
    print("\nGrootV-T inference time per forward pass (median of 3 timed passes):")
    notes = {"Tree SSM, other": "in/out/x/dt projections, depthwise conv, element-wise SSM math",
             "rest": "MLPs, block norms, residuals, stem, downsampling, head"}
    for key in ("tree construction", "tree scan", "Tree SSM, other", "rest"):
        print(f"  {key:18s} {parts[key] * 1e3:8.1f} ms  {parts[key] / parts['total']:6.1%}  "
              f"{notes.get(key, '')}")


# ----------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2, help="torch and numba threads")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per section")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated subset of: " + ",".join(SECTIONS))
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated subset of: " + ",".join(MODELS))
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="tell glibc never to return freed memory to the OS (Linux): no "
                        "page faults after the first steps, so the time ratios show arithmetic "
                        "alone instead of also how often each model's allocations fault")
    parser.add_argument("--compile", action="store_true",
                        help="peak section only: compile each model with grootvl's "
                        "compile_model first and measure a compiled step (a minute or two "
                        "of compiling per model)")
    parser.add_argument("--peak-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keep_freed_memory:
        if "peak" in args.sections.split(","):
            parser.error("--keep-freed-memory: leave out the peak section (it needs freed "
                         "memory returned to read resident memory)")
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: large blocks from the heap, not mmap
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: never shrink the heap
    torch.set_num_threads(args.threads)
    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    if args.peak_child:
        peak_child(args.peak_child, args.batch, args.size, args.compile)
        return
    sections = args.sections.split(",")
    if args.compile and sections != ["peak"]:
        parser.error("--compile applies to the peak section: pass --sections peak")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    chosen = args.models.split(",")
    if set(chosen) - set(MODELS) or not {"grootv_tiny", BASELINE} <= set(chosen):
        parser.error(f"--models: choose from {','.join(MODELS)}, including grootv_tiny and "
                     f"{BASELINE}")
    print(f"CPU, {torch.get_num_threads()} threads, batch {args.batch}, {args.size}x{args.size}, "
          f"float32, {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.2f}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}"
          + ("; freed memory kept (no page faults)" if args.keep_freed_memory else ""))
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 1000, (args.batch,))
    models = {label: create(label, args.size) for label in chosen} \
        if {"inference", "train", "saved", "breakdown"} & set(sections) else {}
    if "inference" in sections:
        inference_section(models, x, args.rounds)
    if "train" in sections:
        train_section(models, x, labels, args.rounds)
    if "saved" in sections:
        saved_section(models, x)
    if "peak" in sections:
        peak_section(args, chosen)
    if "grootl" in sections:
        grootl_section(args.rounds)
    if "breakdown" in sections:
        breakdown_section(models["grootv_tiny"], x)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
