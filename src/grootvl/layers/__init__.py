"""Neural network layers built on ``grootvl.ops`` (modules only compose the operators)."""
from .mlp import GeluMlp
from .tree_ssm import ROOTS, TOPOLOGIES, TREE_COSTS, Trees, TreeSSM

__all__ = ["GeluMlp", "ROOTS", "TOPOLOGIES", "TREE_COSTS", "Trees", "TreeSSM"]
