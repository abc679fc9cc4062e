"""Neural network layers built on ``grootvl.ops`` (modules only compose the operators)."""
from .tree_ssm import ROOTS, TOPOLOGIES, TREE_COSTS, Trees, TreeSSM

__all__ = ["ROOTS", "TOPOLOGIES", "TREE_COSTS", "Trees", "TreeSSM"]
