"""grootvl: tree-topology state space models (GrootV, GrootL) on CPU and GPU.

``grootvl.ops`` holds the tree construction and tree scan operators; ``grootvl.models``
the GrootV backbones (registered with timm on import); ``grootvl.grootl`` tree scanning
for Hugging Face Mamba language models; ``grootvl.dense`` detection/segmentation heads.
"""
import os
import sys

# Must happen before torch (and its OpenMP runtime) is loaded: the runtime reads the variable
# once, at start-up. By default idle OpenMP workers busy-wait for a while after each parallel
# region; torch's pool and numba's pool, which take turns in every Tree SSM layer, can then
# spin against each other for the few cores of a small machine. PASSIVE makes idle workers
# sleep. A value the user set is kept. Once torch is imported it is too late, so a CPU-only
# process is told how to fix it rather than left to run slower without knowing why.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
elif "OMP_WAIT_POLICY" not in os.environ and not sys.modules["torch"].cuda.is_available():
    import warnings

    warnings.warn(
        "torch was imported before grootvl, too late for grootvl to set "
        "OMP_WAIT_POLICY=PASSIVE: torch's and numba's OpenMP workers may spin against each "
        "other and slow CPU work down. Import grootvl before torch, or set "
        "OMP_WAIT_POLICY=PASSIVE in the environment (any value silences this warning).",
        RuntimeWarning, stacklevel=2)

__version__ = "0.1.0"

from .checkpoint import load_checkpoint  # noqa: E402  (after the OpenMP setting above)
from .models import GrootV  # noqa: E402  registers grootv_tiny / grootv_small / grootv_base with timm

__all__ = ["GrootV", "load_checkpoint", "__version__"]
