"""Process-group setup for single-process and ``torchrun`` launches.

``torchrun`` exports RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT); when they are
present we join the default process group with NCCL on CUDA and Gloo on CPU. Everything
here works unchanged in a plain single process (world size 1, no process group).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's GPU when CUDA is available, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available here; use --device cpu")
        if device == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    elif device != "cpu":
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N (got {device!r})")
    return torch.device(device)


def launched_world_size() -> int:
    """How many processes torchrun launched (its WORLD_SIZE), 1 without torchrun; readable
    before :func:`init_distributed`."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of the process group, or of the torchrun launch (also after teardown)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Join the torchrun process group if launched by torchrun, else return a 1-process env."""
    world_size = launched_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def teardown_distributed() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum scalar metrics over all ranks (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: v for k, v in zip(keys, t.tolist())}


def all_gather_object(obj):
    """List of ``obj`` from every rank (``[obj]`` in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """``obj`` as held by rank ``src``, on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """Use ``threads`` CPU threads for torch ops and numba kernels inside the block
    (None: leave the defaults); the previous counts are restored afterwards.

    Small models on few cores often run fastest single-threaded: each op is too short for
    thread wake-up (and, on a busy machine, OpenMP spin-waiting) to pay off.
    """
    if not threads:
        yield
        return
    if threads < 1:
        raise UserError(f"train.threads must be a positive number of threads (got {threads})")
    try:
        import numba
    except ImportError:  # numba is only needed by the CPU tree kernels
        numba = None
    old_torch = torch.get_num_threads()
    old_numba = numba.get_num_threads() if numba else None
    torch.set_num_threads(threads)
    if numba:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(old_torch)
        if numba:
            numba.set_num_threads(old_numba)
