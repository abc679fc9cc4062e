"""OpenMP wait policy on CPU: torch's default (idle workers spin a while) against PASSIVE.

    python benchmarks/bench_threads.py [--threads 2] [--rounds 3] [--steps 4] [--batch 8]
                                       [--size 224] [--model grootv_tiny] [--busy 0]

The policy is read once, when the OpenMP runtime loads, so each measurement is a fresh
process; processes alternate between the two policies round by round (load from other jobs
then hits both alike) and the script prints, side by side:

* one parallel torch operator (an add of 1 MiB tensors), back to back and after 5 ms of
  Python work: the cost of waking a sleeping worker for every parallel region;
* a training step of ``--model`` (forward, cross-entropy, backward, AdamW; ``--steps`` timed
  steps per process, median).

``--busy N`` keeps N other processes spinning on the CPU meanwhile (a machine whose cores
are all taken), where the passive policy wins.

grootvl sets no OpenMP variable itself (it used to set PASSIVE when imported before torch);
this script is how that choice was measured. Linux with GNU OpenMP.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, statistics, sys, time
import torch
import timm
import grootvl  # noqa: F401
threads, steps, batch, size, model = json.loads(sys.argv[1])
torch.set_num_threads(threads)
a, b = torch.randn(1 << 18), torch.randn(1 << 18)
out = torch.empty_like(a)

def op_time(n, gap):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        torch.add(a, b, out=out)
        times.append(time.perf_counter() - t)
        end = time.perf_counter() + gap
        while time.perf_counter() < end:  # Python busy between operators
            pass
    return statistics.median(times) * 1e6

result = {"op": op_time(2000, 0.0), "op_gap": op_time(200, 5e-3)}
if steps:
    torch.manual_seed(0)
    m = timm.create_model(model).train()
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    def step():
        opt.zero_grad(set_to_none=True)
        t = time.perf_counter()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
        return time.perf_counter() - t
    step(); step()
    result["step"] = statistics.median(step() for _ in range(steps)) * 1e3
print(json.dumps(result))
"""

POLICIES = {"default": None, "PASSIVE": "PASSIVE"}


def run_child(policy: str | None, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    spec = json.dumps([args.threads, args.steps, args.batch, args.size, args.model])
    out = subprocess.run([sys.executable, "-c", CHILD, spec], env=env, capture_output=True,
                         text=True)
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-5:])
        sys.exit(f"bench_threads: the measuring process failed (policy {policy or 'default'}):"
                 f"\n{tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--rounds", type=int, default=3,
                        help="processes per policy, alternating between the policies")
    parser.add_argument("--steps", type=int, default=4,
                        help="timed training steps per process (0: operators only)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--model", default="grootv_tiny", help="a timm model name")
    parser.add_argument("--busy", type=int, default=0,
                        help="other processes kept spinning on the CPU during the measurement")
    args = parser.parse_args()
    if args.rounds < 1 or args.steps < 0 or args.threads < 1 or args.busy < 0:
        parser.error("--rounds and --threads must be >= 1, --steps and --busy >= 0")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.busy)]
    results: dict[str, list[dict]] = {name: [] for name in POLICIES}
    try:
        for r in range(args.rounds):
            names = list(POLICIES) if r % 2 == 0 else list(reversed(POLICIES))
            for name in names:
                results[name].append(run_child(POLICIES[name], args))
                print(f"  round {r + 1}/{args.rounds} {name:8s} "
                      f"{json.dumps(results[name][-1])}", file=sys.stderr)
    finally:
        for proc in busy:
            proc.kill()
    rows = [("op", "one parallel operator, back to back", "us"),
            ("op_gap", "one parallel operator after 5 ms of Python", "us")]
    if args.steps:
        rows.append(("step", f"{args.model} training step, batch {args.batch}, {args.size}px",
                     "ms"))
    print(f"{args.threads} threads, {args.rounds} processes per policy (medians over "
          f"processes), {args.busy} busy processes besides; ratio PASSIVE / default")
    for key, label, unit in rows:
        med = {name: statistics.median(res[key] for res in results[name]) for name in POLICIES}
        print(f"  {label:52s} default {med['default']:8.1f} {unit}   PASSIVE "
              f"{med['PASSIVE']:8.1f} {unit}   x{med['PASSIVE'] / med['default']:.2f}")


if __name__ == "__main__":
    main()
