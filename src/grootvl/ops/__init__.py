"""Tree construction and tree scan operators (no nn.Module here).

``grid_tree`` / ``minimum_spanning_tree`` / ``bfs_tree`` build a batch of rooted spanning
trees; ``grid_chain`` and ``random_grid_tree`` build the spanning trees that ignore the
features (docs/design.md, "Scan topologies"); ``tree_scan`` propagates a state space model
over any of them in linear time (docs/design.md, "Tree scan semantics"). Every operator takes
``impl=`` to pick its implementation; the default is the fastest one for the tensors' device.
``selective_tree_scan`` (a Tree SSM layer's core) and ``gelu_linear`` (an MLP's second half)
are differentiable ops that keep little for backward and recompute the rest there. The
module ``grootvl.ops.linear`` runs the layers' matrix products (oneDNN on the CPU).
"""
from .tree import Tree, bfs_tree, grid_edges, grid_tree
from .grid_topologies import grid_chain, random_grid_tree
from .mst import minimum_spanning_tree
from .tree_scan import tree_scan
from .text_tree import text_tree
from .selective_tree_scan import selective_tree_scan
from .gelu_linear import gelu_linear

__all__ = [
    "Tree",
    "bfs_tree",
    "gelu_linear",
    "grid_chain",
    "grid_edges",
    "grid_tree",
    "minimum_spanning_tree",
    "random_grid_tree",
    "selective_tree_scan",
    "text_tree",
    "tree_scan",
]
