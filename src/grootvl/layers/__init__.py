"""Neural network layers built on ``grootvl.ops`` (modules only compose the operators)."""
from .tree_ssm import TreeSSM

__all__ = ["TreeSSM"]
