"""GrootV backbones; importing this package registers ``grootv_tiny/small/base`` with timm.

* :mod:`.grootv`  -- the model, its timm interface and registration
* :mod:`.blocks` -- its stem, downsampling, residual block and stage
* :mod:`.weights` -- weights from files: GrootV release checkpoints, state dicts, safetensors
* :mod:`.factory` -- models by name (timm's registry, ``tiny``/``small``/``base`` aliases)
* :mod:`.dense`   -- Mask R-CNN and UperNet on a GrootV feature pyramid (imported on use:
  it needs torchvision's detection models, and smp for UperNet)
"""
from .blocks import GrootVBlock, GrootVStage
from .grootv import GrootV, grootv_base, grootv_small, grootv_tiny
from .weights import LoadResult, checkpoint_filter_fn, load_checkpoint, read_state_dict

__all__ = ["GrootV", "GrootVBlock", "GrootVStage", "LoadResult", "checkpoint_filter_fn",
           "grootv_base", "grootv_small", "grootv_tiny", "load_checkpoint", "read_state_dict"]
