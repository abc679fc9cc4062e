"""grootvl: tree-topology state space models (GrootV, GrootL) on CPU and GPU.

``grootvl.ops`` holds the tree construction and tree scan operators; ``grootvl.models``
the GrootV backbones (registered with timm on import); ``grootvl.grootl`` tree scanning
for Hugging Face Mamba language models; ``grootvl.dense`` detection/segmentation heads.
"""
from . import _threads

_threads.configure()  # first: OpenMP wait policy, before anything loads torch (see _threads)

__version__ = "0.1.0"

from .checkpoint import load_checkpoint  # noqa: E402  (after the OpenMP setting above)
from .models import GrootV  # noqa: E402  registers grootv_tiny / grootv_small / grootv_base with timm

__all__ = ["GrootV", "load_checkpoint", "__version__"]
