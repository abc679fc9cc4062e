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
# sleep. A value the user set is kept; once torch is imported it is too late to
# matter, so the environment is then left alone.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from .checkpoint import load_checkpoint  # noqa: E402  (after the OpenMP setting above)
from .models import GrootV  # noqa: E402  registers grootv_tiny / grootv_small / grootv_base with timm

__all__ = ["GrootV", "load_checkpoint", "__version__"]
