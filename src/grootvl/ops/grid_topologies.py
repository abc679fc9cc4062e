"""Spanning trees of the pixel grid that ignore the features: chains and random trees.

They are the other scan topologies a tree SSM layer can be compared with
(docs/design.md, "Scan topologies"):

* ``grid_chain``: the row-major chain (pixel r*W + c linked to r*W + c + 1, the order a 1-D
  Mamba reads an image in) or the column-major chain ((r, c) linked to (r + 1, c), and the
  bottom of column c to the top of column c + 1). A chain depends only on (H, W, root), so
  it is built once per (H, W, major, root, device), cached, and expanded to the batch.
* ``random_grid_tree``: the minimum spanning tree of the 4-neighbour grid under uniformly
  random edge costs, drawn anew at every call (a spanning tree that ignores the features).

Both return the same ``Tree`` as ``grid_tree``, so every ``tree_scan`` implementation and
both scan modes serve them.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .arguments import check_int
from .mst import check_impl
from .tree import Tree, _fake_tree, check_root, grid_mst_impl

__all__ = ["CHAIN_MAJORS", "grid_chain", "random_grid_tree"]

CHAIN_MAJORS = ("row", "column")


def _check_size(**sizes: int) -> None:
    for arg, value in sizes.items():
        check_int(arg, value, 1)


def _check_batch(batch: int) -> None:
    check_int("batch", batch, 0)


def _chain_sequence(height: int, width: int, major: str, device: torch.device) -> Tensor:
    """(H*W,) vertex ids in chain order: ``arange`` for ``"row"``; for ``"column"`` the
    pixels column by column, each column top to bottom."""
    ids = torch.arange(height * width, device=device)
    return ids if major == "row" else ids.view(height, width).t().reshape(-1)


def _chain(height: int, width: int, major: str, root: int, device: torch.device) -> Tree:
    """One chain (batch 1) rooted at vertex ``root``: a few tensor ops of static shapes and no
    data-dependent step, so ``torch.compile`` traces it without a graph break."""
    length = height * width
    sequence = _chain_sequence(height, width, major, device)
    row, col = divmod(root, width)
    k = root if major == "row" else col * height + row  # the root's place along the chain
    steps = torch.arange(length, device=device)
    depth = (steps - k).abs()
    # Breadth-first: by distance from the root along the chain (ties: earlier place first).
    order = sequence[torch.sort(depth, stable=True).indices]
    # Each vertex's parent is its neighbour along the chain on the root's side.
    toward_root = torch.where(steps > k, steps - 1, steps + 1).clamp(0, length - 1)
    parent = torch.empty_like(sequence)
    parent[sequence] = torch.where(steps == k, -1, sequence[toward_root])
    # Level d holds the vertices d places before and after the root that exist.
    d = torch.arange(1, max(k, length - 1 - k) + 1, device=device)
    counts = (k - d >= 0).long() + (k + d < length).long()
    level_offsets = torch.cat([torch.tensor([0, 1], device=device), 1 + counts.cumsum(0)])
    return Tree(order[None], parent[None], level_offsets[None])


_CHAINS: dict[tuple, Tree] = {}
_MAX_CACHED_CHAINS = 64


def _cached_chain(height: int, width: int, major: str, root: int, device: torch.device) -> Tree:
    if torch.compiler.is_compiling():
        return _chain(height, width, major, root, device)  # part of the compiled graph
    key = (height, width, major, root, device)
    tree = _CHAINS.get(key)
    if tree is None:
        if len(_CHAINS) >= _MAX_CACHED_CHAINS:
            _CHAINS.clear()
        tree = _CHAINS[key] = _chain(height, width, major, root, device)
    return tree


def grid_chain(height: int, width: int, batch: int = 1, *, major: str = "row", root: int = 0,
               device: torch.device | str | None = None) -> Tree:
    """The row-major or column-major chain through an ``height`` x ``width`` grid, as a Tree.

    Args:
        height, width: grid size; vertex id = row * width + col, L = height * width.
        batch: number of (identical) rows of the returned Tree.
        major: ``"row"``: pixel i linked to pixel i + 1 (left to right, then the next row);
            ``"column"``: (r, c) linked to (r + 1, c), and (H - 1, c) to (0, c + 1).
        root: root vertex id. Vertex 0 and L - 1 are the two ends of both chains; rooted at
            L - 1, the subtree of a vertex is everything before it along the chain, so a
            ``tree_scan(mode="subtree")`` over the row chain is a causal scan in raster order
            (y[i] = x[i] + decay[i - 1] * y[i - 1]). Another vertex splits the chain in two.
        device: where the Tree's tensors live (default CPU).

    Returns:
        A ``Tree`` whose rows are expanded views of one cached chain (the same tensors on every
        call: no rebuild per forward; do not write into them). No Python loop per pixel.
    """
    _check_size(height=height, width=width)
    _check_batch(batch)
    if major not in CHAIN_MAJORS:
        raise ValueError(f"major={major!r} is not a chain order; use one of {CHAIN_MAJORS}")
    check_root(root, height * width)
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    one = _cached_chain(height, width, major, root, device)
    return Tree(one.order.expand(batch, -1), one.parent.expand(batch, -1),
                one.level_offsets.expand(batch, -1))


@torch.library.custom_op("grootvl::grid_mst", mutates_args=())
def _grid_mst_op(costs: Tensor, height: int, width: int, root: int, impl: str
                 ) -> tuple[Tensor, Tensor, Tensor]:
    return grid_mst_impl(costs, height, width, root, impl)


@_grid_mst_op.register_fake
def _(costs: Tensor, height: int, width: int, root: int, impl: str) -> tuple[Tensor, Tensor, Tensor]:
    return _fake_tree(costs, costs.shape[0], height * width)


def random_grid_tree(batch: int, height: int, width: int, *, root: int = 0,
                     generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, impl: str | None = None) -> Tree:
    """Minimum spanning trees of the 4-neighbour grid under uniformly random edge costs.

    Every call draws new costs (``torch.rand`` on ``device``, from ``generator`` or the global
    generator, so ``torch.manual_seed`` makes it reproducible), one row of costs per tree:
    spanning trees of the grid that ignore the features, made exactly like ``grid_tree``'s
    (same MST and BFS). Costs tie with probability ~E^2 / 2^25 and ties break by edge index.

    Args:
        batch, height, width: B trees on L = height * width vertices (vertex id row * W + col).
        root: root vertex id (0: top-left pixel; L - 1: bottom-right).
        generator: random source (its device must be ``device``'s); None: the global one.
        device: where the costs are drawn and the Tree lives (default CPU).
        impl: ``"numba"`` (CPU), ``"torch"`` (any device) or None (the fastest for ``device``).
    """
    _check_batch(batch)
    _check_size(height=height, width=width)
    check_root(root, height * width)
    device = torch.device("cpu") if device is None else torch.device(device)
    impl = check_impl(impl, device)
    num_edges = (height - 1) * width + height * (width - 1)
    costs = torch.rand(batch, num_edges, generator=generator, device=device)
    return Tree(*_grid_mst_op(costs, height, width, root, impl))
