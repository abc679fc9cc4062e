"""GrootV backbones; importing this module registers ``grootv_tiny/small/base`` with timm."""
from .grootv import GrootV, GrootVBlock, GrootVStage, grootv_base, grootv_small, grootv_tiny

__all__ = ["GrootV", "GrootVBlock", "GrootVStage", "grootv_tiny", "grootv_small", "grootv_base"]
