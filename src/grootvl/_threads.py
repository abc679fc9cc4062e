"""The OpenMP wait policy of the process, chosen at ``import grootvl`` if torch is not loaded yet.

Why: a GrootV layer on the CPU alternates between many short PyTorch operators and grootvl's
numba kernels, with Python running on the main thread in between. numba's ``omp`` threading
layer runs its parallel regions on the same GNU libgomp runtime as torch: torch loads its
copy into the global symbol scope (``libtorch_global_deps``), and numba's OpenMP pool binds
``GOMP_parallel`` and the ``omp_*`` calls to it (``LD_DEBUG=bindings``, torch 2.14.1,
whichever of torch and grootvl is imported first). So there is one pool. By default an idle
libgomp worker busy-waits for a few milliseconds after each parallel region before it
sleeps; on a machine whose cores are all busy (other processes, data-loader workers) that
spinning takes CPU time from the thread that runs Python and the next operator.
``OMP_WAIT_POLICY=PASSIVE`` makes idle workers sleep at once, at the cost of a wake-up per
parallel region. The runtime reads the variable once, when it is loaded; there is no call to
change it afterwards.

What ``configure`` does, without the user doing anything and printing nothing:

* torch not imported yet and ``OMP_WAIT_POLICY`` unset: it is set to ``PASSIVE`` in the
  environment, so torch's runtime (and with it numba's parallel regions) starts with it.
* otherwise nothing: a value the user set is kept, and once torch is loaded its runtime has
  read its settings.

Measured on a shared 2-core machine (README, "Performance notes"): on a busy machine the
passive policy took GrootV-T's time ratios to ConvNeXt-T from 1.32x (training) and 1.40x
(inference) down to 1.02x and 1.16x; on a quiet one the two policies measured within the
process-to-process noise of a training step.
"""
from __future__ import annotations

import os
import sys

_VARIABLE = "OMP_WAIT_POLICY"


def configure() -> None:
    """Apply the wait policy described in the module docstring (idempotent)."""
    if _VARIABLE not in os.environ and "torch" not in sys.modules:
        os.environ[_VARIABLE] = "PASSIVE"
