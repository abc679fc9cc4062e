"""Neural network layers built on ``grootvl.ops`` (modules only compose the operators)."""
from .mlp import GeluMlp
from .tree_ssm import TreeSSM

__all__ = ["GeluMlp", "TreeSSM"]
