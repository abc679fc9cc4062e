"""How `grootvl ablate` should use the CPU cores: several one-thread runs, or fewer wider ones?

    python benchmarks/bench_ablate_jobs.py [--task digits] [--steps 30] [--rounds 3]

Trains the model of an ablation task's recipe (random images of its input size, its batch
size) for ``--steps`` optimizer steps in three set-ups, alternating them ``--rounds`` times
so that load from other processes hits all alike, and prints the median total training
throughput of each and their ratios:

* ``1 x 1``: one process, one thread (torch and numba);
* ``1 x N``: one process, N threads (N = the usable cores);
* ``N x 1``: N processes at once, one thread each (what ``--jobs N`` does by default).

``N x 1`` / ``1 x N`` > 1 means separate one-thread runs finish an ablation sooner.
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import grootvl  # noqa: F401  registers grootv_*


def _train(task: str, steps: int, threads: int) -> float:
    """Images per second of ``steps`` training steps of the task's model."""
    import numba
    import torch

    from grootvl.models.factory import create_model
    from grootvl.tasks.ablation import task_config

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    cfg = task_config(task)
    torch.manual_seed(0)
    model = create_model(cfg.model.name, 10, cfg.data.in_chans, cfg.model.drop_path_rate,
                         **cfg.model.kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    size, batch = cfg.data.img_size, cfg.train.batch_size
    images = torch.randn(batch, cfg.data.in_chans, size, size)
    labels = torch.randint(0, 10, (batch,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up (numba kernels load from their cache)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    from grootvl.tasks.ablation import usable_cores

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="digits", choices=["digits", "pathfinder"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cores = usable_cores()
    pool = multiprocessing.get_context("spawn").Pool(cores)
    results: dict[str, list[float]] = {"1 x 1": [], f"1 x {cores}": [], f"{cores} x 1": []}
    for _ in range(args.rounds):
        results["1 x 1"].append(pool.apply(_train, (args.task, args.steps, 1)))
        results[f"1 x {cores}"].append(pool.apply(_train, (args.task, args.steps, cores)))
        parallel = pool.starmap(_train, [(args.task, args.steps, 1)] * cores)
        results[f"{cores} x 1"].append(sum(parallel))
    pool.close()
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, value in medians.items():
        print(f"{name:>7} (processes x threads): {value:7.1f} img/s in total")
    print(f"{cores} x 1 / 1 x {cores}: {medians[f'{cores} x 1'] / medians[f'1 x {cores}']:.2f}; "
          f"1 x {cores} / 1 x 1: {medians[f'1 x {cores}'] / medians['1 x 1']:.2f}  "
          f"({args.task} model, {cores} usable cores)")


if __name__ == "__main__":
    main()
