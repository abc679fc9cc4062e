"""Batched minimum spanning trees with a deterministic (cost, edge index) tie-break.

Two implementations give the identical tensor:

* ``"numba"`` (CPU): Kruskal, parallel over the batch; float32 costs are ordered with a
  stable radix sort, other float dtypes with a stable merge sort.
* ``"torch"`` (any device): Borůvka with batched tensor ops, a fixed number of steps and no
  host synchronisation (one, for the NaN / connectivity check, after it).

Both emit the tree edges of every row in increasing edge-index order, each pair exactly as it
appears in ``edges``. The operator is registered as ``grootvl::minimum_spanning_tree`` so that
``torch.compile`` treats it as one opaque node with a static output shape (B, V-1, 2).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _tree_torch

MST_IMPLS = ("numba", "torch")


def _default_impl(device: torch.device) -> str:
    return "numba" if device.type == "cpu" else "torch"


def check_impl(impl: str | None, device: torch.device, arg: str = "impl") -> str:
    """Resolve ``impl`` (None = fastest for ``device``) and reject impossible choices."""
    if impl is None:
        return _default_impl(device)
    if impl not in MST_IMPLS:
        raise ValueError(f"{arg}={impl!r} is not a tree construction implementation; use one of {MST_IMPLS} or None")
    if impl == "numba" and device.type != "cpu":
        raise ValueError(
            f"{arg}='numba' runs on CPU tensors only, got tensors on {device}; "
            "use impl='torch' (or None) for this device, or move the tensors to the CPU"
        )
    return impl


def _check_edges(edges: Tensor) -> None:
    if not isinstance(edges, Tensor):
        raise TypeError(f"edges must be a LongTensor of shape (E, 2), got {type(edges).__name__}")
    if edges.dtype.is_floating_point or edges.dtype.is_complex or edges.dtype == torch.bool:
        raise TypeError(f"edges must hold integer vertex ids (torch.long), got dtype {edges.dtype}; use edges.long()")
    if edges.dim() != 2 or edges.shape[1] != 2:
        raise ValueError(f"edges must have shape (E, 2), got {tuple(edges.shape)}")


def _check_costs(costs: Tensor, num_edges: int) -> None:
    if not isinstance(costs, Tensor):
        raise TypeError(f"costs must be a floating-point tensor of shape (B, E), got {type(costs).__name__}")
    if not costs.dtype.is_floating_point:
        raise TypeError(
            f"costs must be a real floating-point tensor, got dtype {costs.dtype}; "
            "convert with costs.float() (complex costs have no order)"
        )
    if costs.dim() != 2:
        hint = "; add the batch dimension with costs.unsqueeze(0)" if costs.dim() == 1 else ""
        raise ValueError(f"costs must have shape (B, E) = (batch, number of edges), got {tuple(costs.shape)}{hint}")
    if costs.shape[1] != num_edges:
        raise ValueError(
            f"costs has {costs.shape[1]} columns but edges has {num_edges} rows; "
            "costs[:, e] must be the cost of edges[e]"
        )


def check_vertex_range(edges: Tensor, num_vertices: int, arg: str) -> None:
    """Raise unless every vertex id in ``edges`` lies in [0, num_vertices). Syncs once."""
    if edges.numel() == 0:
        return
    low, high = torch.stack([edges.min(), edges.max()]).tolist()  # one host sync
    if low < 0 or high >= num_vertices:
        raise ValueError(
            f"{arg} holds vertex ids in [{low}, {high}] but num_vertices={num_vertices}; "
            f"ids must lie in [0, {num_vertices - 1}]"
        )


@torch.library.custom_op("grootvl::minimum_spanning_tree", mutates_args=())
def _mst_op(edges: Tensor, costs: Tensor, num_vertices: int, impl: str) -> Tensor:
    return mst_impl(edges, costs, num_vertices, impl)


@_mst_op.register_fake
def _(edges: Tensor, costs: Tensor, num_vertices: int, impl: str) -> Tensor:
    return costs.new_empty((costs.shape[0], num_vertices - 1, 2), dtype=torch.long)


def mst_impl(edges: Tensor, costs: Tensor, num_vertices: int, impl: str, check_edges: bool = True) -> Tensor:
    """The op's implementation: data-dependent checks, then the kernel (arguments checked).

    check_edges=False skips the vertex range check (a host sync) for edges built internally.
    """
    if check_edges:
        check_vertex_range(edges, num_vertices, "edges")
    if costs.dtype in (torch.float16, torch.bfloat16):
        costs = costs.float()  # exact conversion: the order of the costs is unchanged
    if impl == "numba":
        tree_edges, num_used = _mst_numba(edges, costs, num_vertices)  # num_used -1: NaN
    else:
        tree_edges, num_used = _tree_torch.boruvka(edges, costs, num_vertices)
        if costs.numel():
            num_used = torch.where(torch.isnan(costs).any(dim=1), -1, num_used)
    if tree_edges.shape[0] and bool((num_used != num_vertices - 1).any()):
        row = int(torch.nonzero(num_used != num_vertices - 1)[0, 0])
        if int(num_used[row]) < 0:
            raise ValueError(
                f"costs[{row}] contains NaN; a minimum spanning tree needs ordered costs "
                "(check the features the costs come from)"
            )
        raise ValueError(
            f"the graph given by edges is not connected (with the costs of row {row}, the minimum "
            f"spanning forest has {num_vertices - int(num_used[row])} components, not 1); "
            "a spanning tree needs edges that connect all num_vertices vertices"
        )
    return tree_edges


def _mst_numba(edges: Tensor, costs: Tensor, num_vertices: int) -> tuple[Tensor, Tensor]:
    from . import _tree_numba  # numba import is slow; only pay it when used

    batch = costs.shape[0]
    out = torch.empty(batch, num_vertices - 1, 2, dtype=torch.long)
    num_used = torch.empty(batch, dtype=torch.long)
    if batch == 0:
        return out, num_used
    edges_np = edges.contiguous().numpy()
    costs_np = costs.contiguous().numpy()
    if costs.dtype == torch.float32:
        _tree_numba.kruskal_f32(edges_np, costs_np, num_vertices, out.numpy(), num_used.numpy())
    else:
        _tree_numba.kruskal_any(edges_np, costs_np, num_vertices, out.numpy(), num_used.numpy())
    return out, num_used


def minimum_spanning_tree(edges: Tensor, costs: Tensor, num_vertices: int, impl: str | None = None) -> Tensor:
    """Minimum spanning tree of a graph, for every row of a batch of edge costs.

    Args:
        edges: (E, 2) integer vertex ids in [0, num_vertices); the same graph for every row.
        costs: (B, E) real floating-point costs; ``costs[b, e]`` is the cost of ``edges[e]``.
            Ties are broken by edge index (lexicographic (cost, index) order).
        num_vertices: V, the number of vertices (V >= 1). The graph must be connected.
        impl: ``"numba"`` (CPU), ``"torch"`` (any device) or None (numba on CPU, else torch).

    Returns:
        (B, V-1, 2) LongTensor: each row's tree edges in increasing edge-index order, every
        pair as in ``edges``. No gradient flows through it.
    """
    _check_edges(edges)
    _check_costs(costs, edges.shape[0])
    if not isinstance(num_vertices, int) or isinstance(num_vertices, bool) or num_vertices < 1:
        raise ValueError(f"num_vertices must be a positive int, got {num_vertices!r}")
    if edges.device != costs.device:
        raise ValueError(
            f"edges is on {edges.device} but costs is on {costs.device}; move both to the same device"
        )
    impl = check_impl(impl, costs.device)
    return _mst_op(edges.long(), costs.detach(), num_vertices, impl)
