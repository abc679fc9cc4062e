"""How data reaches the loop: training loaders that resume exactly, evaluation shards."""
from __future__ import annotations

import random
from typing import Callable

import numpy as np
import torch

from ..errors import UserError
from .distributed import DistEnv


class ShardSampler(torch.utils.data.Sampler):
    """Every ``world_size``-th index starting at ``rank``, in order, without padding.

    Unlike ``DistributedSampler`` no sample is repeated, so metrics summed over ranks are
    exact for any dataset size.
    """

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # distinct per worker and per epoch
    np.random.seed(seed)
    random.seed(seed)


def _loader_options(workers: int, pin_memory: bool, env: DistEnv, collate_fn) -> dict:
    return dict(num_workers=workers, pin_memory=pin_memory and env.device.type == "cuda",
                persistent_workers=workers > 0, worker_init_fn=_seed_worker,
                collate_fn=collate_fn)


def train_loader(dataset, batch_size: int, accum_steps: int, seed: int, env: DistEnv,
                 workers: int, pin_memory: bool = True,
                 collate_fn: Callable | None = None) -> torch.utils.data.DataLoader:
    """Shuffled, sharded training batches whose order depends only on (seed, epoch).

    A ``DistributedSampler`` also in one process: a resumed run sees exactly the batches an
    uninterrupted one would (call ``loader.sampler.set_epoch(epoch)`` every epoch).
    """
    needed = batch_size * env.world_size * accum_steps
    if len(dataset) < needed:
        raise UserError(f"the training set has {len(dataset)} usable samples, fewer than one "
                        f"optimizer step needs (batch_size {batch_size} x {env.world_size} "
                        f"process(es) x accum_steps {accum_steps}); lower --batch-size")
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=env.world_size,
                                                  rank=env.rank, shuffle=True, seed=seed,
                                                  drop_last=True)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                       drop_last=True,
                                       **_loader_options(workers, pin_memory, env, collate_fn))


def eval_loader(dataset, batch_size: int, env: DistEnv, workers: int, pin_memory: bool = True,
                collate_fn: Callable | None = None) -> torch.utils.data.DataLoader:
    """This rank's share of ``dataset`` (:class:`ShardSampler`), in order."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), env.rank,
                                                             env.world_size),
        **_loader_options(workers, pin_memory, env, collate_fn))
