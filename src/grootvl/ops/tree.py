"""Rooted spanning trees for the tree scan: the ``Tree`` container, grid graphs and BFS.

``grid_tree`` is what a GrootV layer calls: edge costs from the guide features on the
4-neighbour grid (docs/design.md, "Building trees"), their minimum spanning tree, and a
breadth-first order from the root (vertex 0 by default). On CPU with at least as many images
as numba threads, the three stages run fused in one numba kernel, one image per thread;
otherwise stage by stage, each in parallel. The trees that ignore the features (chains,
random spanning trees) are in ``grid_topologies.py``.

Tree construction is registered as custom ops (``grootvl::grid_tree``, ``grootvl::bfs_tree``,
``grootvl::grid_mst`` in ``grid_topologies.py`` and ``grootvl::minimum_spanning_tree`` in
``mst.py``) so ``torch.compile`` keeps each as one opaque node. The length of ``level_offsets`` (tree depth + 1) is data-dependent. An operator
whose output shape depends on data makes Dynamo break the graph (unless the user turns on
``capture_dynamic_output_shape_ops``), and the graph resumed after such a break failed to
compile with dynamic shapes. So while compiling or exporting, the wrappers ask the ops for
``level_offsets`` padded to the static width L + 1 (the padding value L marks a level past a
row's last one, as for shorter rows); ``tree_scan`` cuts the padding off again inside its op.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from . import _tree_torch
from .arguments import check_int
from .mst import check_impl, check_vertex_range, mst_impl

GRID_COSTS = ("cosine", "l2", "l1")  # index = the cost kind of the numba kernels


@dataclass(frozen=True)
class Tree:
    """A batch of rooted spanning trees on ``L`` vertices, in breadth-first order.

    Attributes:
        order: (B, L) vertices in breadth-first order; ``order[:, 0]`` is the root.
        parent: (B, L) ``parent[b, v]`` is the parent of vertex ``v``; -1 at the root.
        level_offsets: (B, D+1) level ``d`` of row ``b`` is ``order[b, off[b, d]:off[b, d+1]]``;
            D is the largest number of levels in the batch, shorter rows are padded with L,
            and ``level_offsets[:, 0] == 0``. Spanning trees built inside ``torch.compile``
            or ``torch.export`` (``grid_tree``, ``bfs_tree``, ``random_grid_tree``) have
            D = L (padded with L): their depth is data-dependent. Chains never are padded.
    """

    order: Tensor
    parent: Tensor
    level_offsets: Tensor

    @property
    def batch_size(self) -> int:
        return self.order.shape[0]

    @property
    def num_vertices(self) -> int:
        return self.order.shape[1]

    @property
    def root(self) -> Tensor:
        """(B,) vertex id of each row's root (``order[:, 0]``)."""
        return self.order[:, 0]

    @property
    def device(self) -> torch.device:
        return self.order.device

    def to(self, device: torch.device | str) -> "Tree":
        """The same trees with all tensors on ``device``."""
        return Tree(self.order.to(device), self.parent.to(device), self.level_offsets.to(device))

    def check_compatible(self, x: Tensor, name: str = "x") -> None:
        """Raise a ValueError/TypeError unless ``x`` (B, L, ...) can be scanned over this tree."""
        check_tree_matches(self, x, name)


def check_tree_matches(tree: Tree, x: Tensor, name: str = "x") -> None:
    """Validate that ``x`` has shape (B, L, ...) on the tree's device and that the tree's
    tensors are int64 of consistent shapes; metadata only (no host sync), so whether they
    form trees is not checked (``bfs_tree`` checks that when it builds them)."""
    if not isinstance(tree, Tree):
        raise TypeError(f"tree must be a grootvl.ops.Tree (from grid_tree, grid_chain or bfs_tree), "
                        f"got {type(tree).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor of shape (B, L, C), got {type(x).__name__}")
    fields = {"order": tree.order, "parent": tree.parent, "level_offsets": tree.level_offsets}
    for field, t in fields.items():
        if not isinstance(t, Tensor) or t.dtype != torch.long:
            raise TypeError(f"tree.{field} must be an int64 (torch.long) tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.dim() != 2:
            raise ValueError(f"tree.{field} must be 2-D, got shape {tuple(t.shape)}")
    if tree.parent.shape != tree.order.shape or tree.level_offsets.shape[0] != tree.batch_size:
        raise ValueError(
            f"tree.order {tuple(tree.order.shape)}, tree.parent {tuple(tree.parent.shape)} and "
            f"tree.level_offsets {tuple(tree.level_offsets.shape)} must be (B, L), (B, L) and (B, D+1)")
    if x.dim() < 2 or x.shape[0] != tree.batch_size or x.shape[1] != tree.num_vertices:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)} but the tree has batch size {tree.batch_size} and "
            f"{tree.num_vertices} vertices; {name} must be (B, L, ...) = "
            f"({tree.batch_size}, {tree.num_vertices}, ...) (channels last)"
        )
    for field, t in fields.items():
        if t.device != x.device:
            raise ValueError(f"{name} is on {x.device} but the tree is on {t.device} "
                             f"(tree.{field}); use tree.to({name}.device)")


def autocast_off(device: torch.device):
    """A context that disables autocast on ``device``'s type (a no-op for other devices)."""
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast gives matrix products on ``device`` now; None when it is off."""
    if device.type in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def grid_edges(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """4-neighbour edges of an ``height`` x ``width`` grid, vertex id = row * width + col.

    Returns (E, 2) with E = (H-1)*W + H*(W-1): first all vertical pairs (r*W+c, (r+1)*W+c)
    in row-major order of (r, c), then all horizontal pairs (r*W+c, r*W+c+1). The order
    matters: ties between equal costs are broken by this index.
    """
    check_int("height", height, 1)
    check_int("width", width, 1)
    ids = torch.arange(height * width, device=device).view(height, width)
    vertical = torch.stack([ids[:-1, :].reshape(-1), ids[1:, :].reshape(-1)], dim=1)
    horizontal = torch.stack([ids[:, :-1].reshape(-1), ids[:, 1:].reshape(-1)], dim=1)
    return torch.cat([vertical, horizontal], dim=0)


@torch.library.custom_op("grootvl::bfs_tree", mutates_args=())
def _bfs_op(tree_edges: Tensor, num_vertices: int, root: int, impl: str,
            pad_levels: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    return padded_levels(_bfs_impl(tree_edges, num_vertices, root, impl), num_vertices, pad_levels)


@_bfs_op.register_fake
def _(tree_edges: Tensor, num_vertices: int, root: int, impl: str,
      pad_levels: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    return fake_tree(tree_edges, tree_edges.shape[0], num_vertices, pad_levels)


def fake_tree(like: Tensor, batch: int, num_vertices, pad_levels: bool
              ) -> tuple[Tensor, Tensor, Tensor]:
    """The fake (meta) output of a tree-building op: (order, parent, level_offsets).
    The depth + 1 columns of level_offsets are data-dependent: an unbacked size, unless the
    op pads them to their bound L + 1 (``pad_levels``, see the module docstring)."""
    num_offsets = num_vertices + 1 if pad_levels else torch.library.get_ctx().new_dynamic_size()
    shape = (batch, num_vertices)
    return (like.new_empty(shape, dtype=torch.long), like.new_empty(shape, dtype=torch.long),
            like.new_empty((batch, num_offsets), dtype=torch.long))


def padded_levels(tree: tuple[Tensor, Tensor, Tensor], num_vertices: int, pad_levels: bool
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """The op's output, level_offsets padded with num_vertices to L + 1 columns if asked."""
    order, parent, level_offsets = tree
    if pad_levels:
        missing = num_vertices + 1 - level_offsets.shape[1]
        level_offsets = torch.nn.functional.pad(level_offsets, (0, missing), value=num_vertices)
    return order, parent, level_offsets


def static_levels() -> bool:
    """Whether level_offsets must have a static shape: while compiling or exporting."""
    return torch.compiler.is_compiling()


def _bfs_impl(tree_edges: Tensor, num_vertices: int, root: int, impl: str,
              check_tree: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """The op's implementation. check_tree=False trusts tree_edges to be spanning trees (the
    output of our MST) and skips the two checks that cost a host sync each on a GPU."""
    if check_tree:
        check_vertex_range(tree_edges, num_vertices, "tree_edges")
    if impl == "numba":
        order, parent, level_offsets, reached = _bfs_numba(tree_edges, num_vertices, root)
        ok = reached == num_vertices
    else:
        order, parent, level_offsets, ok = _tree_torch.bfs_euler(tree_edges, num_vertices, root)
    if check_tree and order.shape[0] and not bool(ok.all()):
        row = int(torch.nonzero(~ok)[0, 0])
        raise ValueError(
            f"tree_edges[{row}] is not a spanning tree of the {num_vertices} vertices (it has a cycle "
            "or is disconnected); pass the output of minimum_spanning_tree"
        )
    return order, parent, level_offsets


def _bfs_numba(tree_edges: Tensor, num_vertices: int, root: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from . import _tree_numba

    order, parent, level_ends, num_levels, reached = _bfs_outputs(tree_edges.shape[0], num_vertices)
    if tree_edges.shape[0]:
        _tree_numba.bfs_batch(tree_edges.contiguous().numpy(), root, order.numpy(), parent.numpy(),
                              level_ends.numpy(), num_levels.numpy(), reached.numpy())
    return order, parent, _level_offsets(level_ends, num_levels), reached


def _bfs_outputs(batch: int, num_vertices: int) -> tuple[Tensor, ...]:
    """Buffers the numba BFS kernels fill: order, parent, level_ends, num_levels, status."""
    order = torch.empty(batch, num_vertices, dtype=torch.long)
    parent = torch.empty(batch, num_vertices, dtype=torch.long)
    level_ends = torch.empty(batch, num_vertices, dtype=torch.long)
    return order, parent, level_ends, torch.zeros(batch, dtype=torch.long), torch.zeros(batch, dtype=torch.long)


def _level_offsets(level_ends: Tensor, num_levels: Tensor) -> Tensor:
    depth = int(num_levels.max()) if num_levels.numel() else 1
    zeros = torch.zeros(level_ends.shape[0], 1, dtype=torch.long)
    return torch.cat([zeros, level_ends[:, :depth]], dim=1)


def bfs_tree(tree_edges: Tensor, num_vertices: int, root: int = 0, impl: str | None = None) -> Tree:
    """Root every tree of a batch at ``root`` and order its vertices breadth first.

    Args:
        tree_edges: (B, V-1, 2) integer vertex ids; each row must form a spanning tree on
            ``num_vertices`` vertices (e.g. the output of ``minimum_spanning_tree``).
        num_vertices: V >= 1.
        root: root vertex id for every row (GrootV uses 0, GrootL uses V-1).
        impl: ``"numba"`` (CPU) or ``"torch"`` (any device; O(log V) batched steps via the
            Euler tour, one host sync) or None (numba on CPU, else torch).

    Returns:
        A ``Tree`` on the device of ``tree_edges``.
    """
    if not isinstance(tree_edges, Tensor):
        raise TypeError(f"tree_edges must be a LongTensor of shape (B, V-1, 2), got {type(tree_edges).__name__}")
    if tree_edges.dtype.is_floating_point or tree_edges.dtype.is_complex or tree_edges.dtype == torch.bool:
        raise TypeError(f"tree_edges must hold integer vertex ids, got dtype {tree_edges.dtype}; use tree_edges.long()")
    if not isinstance(num_vertices, int) or isinstance(num_vertices, bool) or num_vertices < 1:
        raise ValueError(f"num_vertices must be a positive int, got {num_vertices!r}")
    if tree_edges.dim() != 3 or tree_edges.shape[1] != num_vertices - 1 or tree_edges.shape[2] != 2:
        raise ValueError(
            f"tree_edges must have shape (B, V-1, 2) = (B, {num_vertices - 1}, 2) for num_vertices={num_vertices}, "
            f"got {tuple(tree_edges.shape)}"
        )
    check_root(root, num_vertices)
    impl = check_impl(impl, tree_edges.device)
    order, parent, level_offsets = _bfs_op(tree_edges.long(), num_vertices, root, impl,
                                           static_levels())
    return Tree(order, parent, level_offsets)


def random_tree_edges(batch: int, num_vertices: int,
                      generator: torch.Generator | None = None) -> Tensor:
    """(batch, V-1, 2) edges of random recursive trees, uniformly relabelled (CPU, int64).

    Each vertex attaches to a uniformly chosen earlier one, so the trees have wide
    breadth-first levels; for tests and benchmarks of code that must work on any tree
    (``bfs_tree(random_tree_edges(...), V)`` roots them).
    """
    rows = []
    for _ in range(batch):
        label = torch.randperm(num_vertices, generator=generator)
        child = torch.arange(1, num_vertices)
        parent = (torch.rand(num_vertices - 1, generator=generator) * child).long()
        rows.append(torch.stack([label[child], label[parent]], dim=1))
    return torch.stack(rows)


def grid_edge_costs(guide: Tensor, cost: str = "cosine", impl: str | None = None) -> Tensor:
    """Float32 costs (B, E) of the ``grid_edges(H, W)`` of a guide (B, C, H, W).

    ``"cosine"``: exp(-cosine similarity) of neighbouring feature vectors; ``"l2"``: squared
    Euclidean distance; ``"l1"``: Manhattan distance (sum of absolute differences). The guide
    is cast to float32 first (a bf16 guide under autocast gives the tree of its float32 values).

    ``impl="torch"`` evaluates the cosine cost exactly as the original GrootV (vertical, then
    horizontal neighbour slices reshaped to (B, C, -1), ``torch.cosine_similarity`` along dim
    1, then ``torch.exp(-w)``), so on the device the original ran on, equal costs tie the same
    way. ``impl="numba"`` (CPU default) computes the same formula in one streaming pass over
    the guide; it may differ from the torch path in the last float32 bit.
    """
    _check_guide(guide, cost)
    impl = check_impl(impl, guide.device)
    guide = guide.detach().float()
    batch, channels, height, width = guide.shape
    if impl == "numba":
        from . import _tree_costs_numba

        costs = torch.empty(batch, (height - 1) * width + height * (width - 1))
        if costs.numel():
            # The kernel reads channels-last guides in place (same arithmetic, no copy).
            _tree_costs_numba.grid_costs(*_guide_array(guide), GRID_COSTS.index(cost), costs.numpy())
        return costs
    # contiguous: channels-last guides reduce in the same order as the original's NCHW ones.
    guide = guide.contiguous()
    vertical_shape = (batch, channels, (height - 1) * width)
    horizontal_shape = (batch, channels, height * (width - 1))
    upper, lower = guide[:, :, :-1, :].reshape(vertical_shape), guide[:, :, 1:, :].reshape(vertical_shape)
    left, right = guide[:, :, :, :-1].reshape(horizontal_shape), guide[:, :, :, 1:].reshape(horizontal_shape)
    if cost == "cosine":
        vertical = torch.exp(-torch.cosine_similarity(upper, lower, dim=1))
        horizontal = torch.exp(-torch.cosine_similarity(left, right, dim=1))
    elif cost == "l2":
        vertical = (upper - lower).square().sum(dim=1)
        horizontal = (left - right).square().sum(dim=1)
    else:
        vertical = (upper - lower).abs().sum(dim=1)
        horizontal = (left - right).abs().sum(dim=1)
    return torch.cat([vertical, horizontal], dim=1)


def grid_mst_impl(costs: Tensor, height: int, width: int, root: int, impl: str
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """(order, parent, level_offsets) of the MST of ``grid_edges(height, width)`` under
    ``costs`` (B, E), rooted at ``root``; arguments trusted (the stages of the custom ops)."""
    num_vertices = height * width
    edges = grid_edges(height, width, device=costs.device)
    tree_edges = mst_impl(edges, costs, num_vertices, impl, check_edges=False)
    return _bfs_impl(tree_edges, num_vertices, root, impl, check_tree=False)


@torch.library.custom_op("grootvl::grid_tree", mutates_args=())
def _grid_tree_op(guide: Tensor, cost: str, root: int, impl: str,
                  pad_levels: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    batch, _, height, width = guide.shape
    if impl == "numba" and batch >= _numba_threads():
        return padded_levels(_grid_tree_fused(guide, cost, root), height * width, pad_levels)
    with autocast_off(guide.device):
        costs = grid_edge_costs(guide, cost, impl=impl)
    return padded_levels(grid_mst_impl(costs, height, width, root, impl), height * width,
                         pad_levels)


@_grid_tree_op.register_fake
def _(guide: Tensor, cost: str, root: int, impl: str, pad_levels: bool = False
      ) -> tuple[Tensor, Tensor, Tensor]:
    return fake_tree(guide, guide.shape[0], guide.shape[2] * guide.shape[3], pad_levels)


def _numba_threads() -> int:
    import numba

    return numba.get_num_threads()


def _grid_tree_fused(guide: Tensor, cost: str, root: int) -> tuple[Tensor, Tensor, Tensor]:
    """Costs, MST and BFS in one numba kernel, one image per thread (CPU, float32 costs)."""
    from . import _tree_numba

    batch, _, height, width = guide.shape
    num_vertices = height * width
    order, parent, level_ends, num_levels, status = _bfs_outputs(batch, num_vertices)
    data, channels_last = _guide_array(guide)
    _tree_numba.grid_tree_batch(data, channels_last, GRID_COSTS.index(cost), root,
                                _grid_edges_array(height, width), order.numpy(), parent.numpy(),
                                level_ends.numpy(), num_levels.numpy(), status.numpy())
    if bool((status < 0).any()):
        row = int(torch.nonzero(status < 0)[0, 0])
        raise ValueError(f"the edge costs of guide[{row}] contain NaN (the guide has NaN or inf values)")
    return order, parent, _level_offsets(level_ends, num_levels)


@functools.lru_cache(maxsize=16)
def _grid_edges_array(height: int, width: int):
    """grid_edges as a read-only NumPy array, cached: the fused kernel needs it on every call."""
    edges = grid_edges(height, width).numpy()
    edges.setflags(write=False)
    return edges


def _guide_array(guide: Tensor):
    """A float32 C-contiguous NumPy view (or copy) of guide, and whether it is (B, H, W, C)."""
    guide = guide.detach().float()
    channels_last = not guide.is_contiguous() and guide.is_contiguous(memory_format=torch.channels_last)
    data = guide.permute(0, 2, 3, 1) if channels_last else guide.contiguous()
    return data.numpy(), channels_last


def grid_tree(guide: Tensor, cost: str = "cosine", impl: str | None = None, root: int = 0) -> Tree:
    """Minimum spanning tree of the 4-neighbour grid of ``guide``, rooted at ``root``.

    Args:
        guide: (B, C, H, W) features (any float dtype, any memory format); the edge cost of
            neighbours u, v is computed from ``guide[:, :, u]`` and ``guide[:, :, v]`` in float32.
        cost: ``"cosine"`` (default, as GrootV), ``"l2"`` or ``"l1"``; see ``grid_edge_costs``.
        impl: tree construction implementation, ``"numba"`` (CPU), ``"torch"`` or None.
        root: root vertex id in [0, H*W); GrootV uses 0 (the top-left pixel), a scan rooted
            at the last pixel uses H*W - 1. The tree is the same, only its orientation changes.

    Returns:
        A ``Tree`` on L = H*W vertices (vertex id = row * W + col). No gradient.
    """
    _check_guide(guide, cost)
    check_root(root, guide.shape[2] * guide.shape[3])
    impl = check_impl(impl, guide.device)
    return Tree(*_grid_tree_op(guide.detach(), cost, root, impl, static_levels()))


def check_root(root: int, num_vertices: int) -> None:
    """Raise unless ``root`` is an int vertex id in [0, num_vertices)."""
    if not isinstance(root, int) or isinstance(root, bool) or not 0 <= root < max(num_vertices, 1):
        raise ValueError(f"root must be an int vertex id in [0, {max(num_vertices, 1) - 1}], got {root!r}")


def _check_guide(guide: Tensor, cost: str) -> None:
    if not isinstance(guide, Tensor):
        raise TypeError(f"guide must be a (B, C, H, W) tensor, got {type(guide).__name__}")
    if guide.dim() != 4:
        raise ValueError(
            f"guide must be 4-D (B, C, H, W), got shape {tuple(guide.shape)}; "
            "for a channels-last (B, H, W, C) tensor pass guide.permute(0, 3, 1, 2)"
        )
    if not guide.dtype.is_floating_point:
        raise TypeError(f"guide must be a floating-point tensor, got {guide.dtype}; use guide.float()")
    if guide.shape[2] < 1 or guide.shape[3] < 1:
        raise ValueError(f"guide has an empty grid: height H = {guide.shape[2]} and width W = "
                         f"{guide.shape[3]} (guide shape {tuple(guide.shape)}) must both be >= 1")
    if cost not in GRID_COSTS:
        raise ValueError(f"cost={cost!r} is not a grid edge cost; use one of {GRID_COSTS}")
