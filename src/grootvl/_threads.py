"""Keep PyTorch's and numba's OpenMP thread pools from spinning against each other.

Why: a GrootV layer on the CPU alternates between PyTorch operators and grootvl's numba
kernels (tree construction, tree scan, fused element-wise stages). Each library runs its own
pool of OpenMP worker threads; on Linux these are usually two separate GNU libgomp runtimes
(the copy in torch's wheel, and the system's, which numba's ``omp`` threading layer links).
By default an idle libgomp worker busy-waits for about 3 ms after each parallel region before
it sleeps, so on a machine with few cores the pool that has just finished keeps spinning on
the cores the other pool needs. ``OMP_WAIT_POLICY=PASSIVE`` makes idle workers sleep at once.
Each runtime reads the variable once, when it is loaded, and there is no call to change its
spinning afterwards.

What ``configure`` does, at ``import grootvl``, without the user doing anything:

* torch not imported yet: ``OMP_WAIT_POLICY=PASSIVE`` is put in the environment (unless the
  user set a value), so both runtimes start with it.
* torch already imported (``import torch; import grootvl``): torch's runtime has read its
  settings, so its pool keeps torch's default. numba's pool is started right away with the
  variable set for that moment only, so that numba's idle workers at least never spin
  against torch's. Nothing is printed.

Other options that were measured or ruled out: numba's ``workqueue`` layer is not thread-safe
(numba aborts the process when two threads launch parallel kernels at once); ``tbb`` needs an
extra package and leaves torch's spinning pool as it is; pausing torch's pool before each
numba kernel (``omp_pause_resource_all``) or running numba's kernels on one thread did not
measure clearly better than the above (benchmarks/bench_models.py, torch imported first),
and one thread would slow the kernels down on larger machines.
"""
from __future__ import annotations

import os
import sys

_VARIABLE = "OMP_WAIT_POLICY"


def configure() -> None:
    """Apply the wait policy described in the module docstring (idempotent)."""
    if _VARIABLE in os.environ:
        return  # the user's choice (or ours, from an earlier call), read by both runtimes
    if "torch" not in sys.modules:
        os.environ[_VARIABLE] = "PASSIVE"
        return
    start_numba_pool_passive()


def start_numba_pool_passive() -> None:
    """Start numba's thread pool now, with its OpenMP runtime told to let idle workers sleep;
    the environment is left as it was. No effect if the pool is already running."""
    import numba

    try:
        numba.threading_layer()  # raises ValueError until the pool has been started
        return
    except ValueError:
        pass
    os.environ[_VARIABLE] = "PASSIVE"
    try:
        numba.get_num_threads()  # starts the pool, loading its OpenMP runtime now
    finally:
        os.environ.pop(_VARIABLE, None)
