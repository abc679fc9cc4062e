"""Dense O(L^2) tree scan: the test oracle (docs/design.md, "Tree scan semantics").

Builds the path-weight matrix S explicitly, per batch element and channel, and multiplies.
S(i, j) = exp(logP[i] + logP[j] - 2 logP[lca(i, j)]) where logP[v] is the sum of log-decays
on the root->v path; the log domain keeps deep trees from underflowing. The backward uses
the dense derivative of S (no closed form, no autograd). Forward is O(L^2) memory and time per
channel, backward O(L^3) time: use only for tests.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["scan_forward", "scan_backward", "dense_path_weights"]


def _levels(order: Tensor, level_offsets: Tensor) -> list[Tensor]:
    """Vertex ids of each BFS level below the root, root level excluded."""
    L = order.numel()
    offsets = [o for o in level_offsets.tolist() if o < L] + [L]
    return [order[a:b] for a, b in zip(offsets[1:-1], offsets[2:])]


def _ancestry(order: Tensor, parent: Tensor, levels: list[Tensor]) -> tuple[Tensor, Tensor]:
    """For one tree: ``is_desc[i, j]`` (j is i or below i) and ``lca[i, j]``, both (L, L)."""
    L = order.numel()
    is_anc = torch.zeros(L, L, dtype=torch.bool, device=order.device)  # is_anc[i, v]
    root = order[0]
    is_anc[root, root] = True
    for level in levels:
        is_anc[level] = is_anc[parent[level]]
        is_anc[level, level] = True
    is_desc = is_anc.T.contiguous()
    del is_anc
    # Row of i: lca(i, j) = i where j is in i's subtree, else lca(parent(i), j).
    lca = torch.empty(L, L, dtype=torch.long, device=order.device)
    lca[root] = root
    for level in levels:
        lca[level] = torch.where(is_desc[level], level[:, None], lca[parent[level]])
    return is_desc, lca


def _log_paths(decay: Tensor, order: Tensor, parent: Tensor, levels: list[Tensor]) -> Tensor:
    """(L, C) sum of log-decays on the path root -> v (the root's own decay is unused)."""
    log_p = torch.zeros_like(decay)
    for level in levels:
        log_p[level] = log_p[parent[level]] + decay[level].log()
    return log_p


def _path_weights(log_p: Tensor, lca: Tensor) -> Tensor:
    """S (L, L) for one channel from its root-path log-decays (L,); in place to save memory."""
    s = log_p[lca]
    s.mul_(-2).add_(log_p[:, None]).add_(log_p[None, :])
    return s.exp_()


def _path_weight_terms(decay: Tensor, order: Tensor, parent: Tensor, level_offsets: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """``(is_desc, lca, log_p)`` of one tree: everything S is built from, per channel.

    The forward, the backward and ``dense_path_weights`` must all build S the same way, or the
    oracle would check a kernel against two different definitions.
    """
    levels = _levels(order, level_offsets)
    is_desc, lca = _ancestry(order, parent, levels)
    return is_desc, lca, _log_paths(decay, order, parent, levels)


def dense_path_weights(decay: Tensor, order: Tensor, parent: Tensor, level_offsets: Tensor,
                       mode: str = "full") -> Tensor:
    """S (C, L, L) of one tree (order, parent, level_offsets of one batch row), decay (L, C)."""
    is_desc, lca, log_p = _path_weight_terms(decay, order, parent, level_offsets)
    s = torch.stack([_path_weights(log_p[:, c], lca) for c in range(decay.shape[1])])
    return s * is_desc if mode == "subtree" else s


def _recover_x(up: Tensor, decay: Tensor, order: Tensor, parent: Tensor) -> Tensor:
    """x[v] = up[v] - sum over children u of decay[u] * up[u] (inverts the up pass)."""
    child = order[:, 1:, None].expand(-1, -1, up.shape[2])  # every non-root vertex
    pulled = torch.gather(decay, 1, child) * torch.gather(up, 1, child)
    x = up.clone()
    x.scatter_add_(1, torch.gather(parent, 1, order[:, 1:])[..., None].expand_as(pulled), -pulled)
    return x


def _dense_forward(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                   level_offsets: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """(S x, S_subtree x): the full scan (zeros for mode 'subtree') and the subtree scan."""
    y = torch.zeros_like(x)
    up = torch.zeros_like(x)
    for b in range(x.shape[0]):
        is_desc, lca, log_p = _path_weight_terms(decay[b], order[b], parent[b], level_offsets[b])
        for c in range(x.shape[2]):  # per channel keeps memory at one L x L matrix
            s = _path_weights(log_p[:, c], lca)
            if mode == "full":
                y[b, :, c] = s @ x[b, :, c]
            up[b, :, c] = s.masked_fill_(~is_desc, 0) @ x[b, :, c]
    return y, up


def _dense_backward(x: Tensor, grad_y: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                    level_offsets: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """(S^T g, dL/d decay) of L = g . (S x), from the dense S and its derivative.

    dS(i, j)/d decay[v] = S(i, j) / decay[v] when the edge (v, parent(v)) is on the i..j path,
    i.e. when exactly one of i, j lies in subtree(v). With M = S * (g x^T) and
    D[v, i] = [i in subtree(v)], the decay gradient is
    (rowsum(D M) + rowsum(D M^T) - 2 diag(D M D^T)) / decay. O(L^3): small trees only.
    """
    grad_x = torch.zeros_like(x)
    grad_decay = torch.zeros_like(x)
    for b in range(x.shape[0]):
        is_desc, lca, log_p = _path_weight_terms(decay[b], order[b], parent[b], level_offsets[b])
        in_subtree = is_desc.to(x.dtype)
        root = order[b, 0]
        for c in range(x.shape[2]):
            s = _path_weights(log_p[:, c], lca)
            if mode == "subtree":
                s = s * in_subtree
            g = grad_y[b, :, c]
            grad_x[b, :, c] = s.T @ g
            m = s * (g[:, None] * x[b, None, :, c])
            dm = in_subtree @ m
            crossing = dm.sum(1) + in_subtree @ m.sum(0) - 2 * (dm * in_subtree).sum(1)
            grad_decay[b, :, c] = crossing / decay[b, :, c]
            grad_decay[b, root, c] = 0
    return grad_x, grad_decay


def scan_forward(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor, level_offsets: Tensor,
                 mode: str) -> tuple[Tensor, Tensor]:
    """(y, up) by dense matrix products; up is the subtree scan (== y for mode 'subtree')."""
    y, up = _dense_forward(x, decay, order, parent, level_offsets, mode)
    return (up, up) if mode == "subtree" else (y, up)


def scan_backward(grad_y: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                  level_offsets: Tensor, up: Tensor, y: Tensor, mode: str
                  ) -> tuple[Tensor, Tensor]:
    """(grad_x, grad_decay) from the dense S and its derivative (y is unused).

    The decay gradient depends on x, which the backward interface does not carry; it is
    recovered exactly from the up pass.
    """
    x = _recover_x(up, decay, order, parent)
    return _dense_backward(x, grad_y, decay, order, parent, level_offsets, mode)
