"""Dense O(L^2) tree scan: the test oracle (DESIGN.md §2).

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


def _ancestry(order: Tensor, parent: Tensor, level_offsets: Tensor) -> tuple[Tensor, Tensor]:
    """For one tree: ``is_anc[i, v]`` (v is i or an ancestor of i) and ``lca[i, j]``."""
    L = order.numel()
    device = order.device
    is_anc = torch.zeros(L, L, dtype=torch.bool, device=device)
    lca = torch.empty(L, L, dtype=torch.long, device=device)
    offsets = [o for o in level_offsets.tolist() if o < L] + [L]
    root = order[0]
    is_anc[root, root] = True
    lca[root] = root
    for start, stop in zip(offsets[:-1], offsets[1:]):
        if start == 0:
            continue
        level = order[start:stop]
        is_anc[level] = is_anc[parent[level]]
        is_anc[level, level] = True
    # Row of i: lca(i, j) = i where j is in i's subtree, else lca(parent(i), j).
    is_desc = is_anc.T
    for start, stop in zip(offsets[:-1], offsets[1:]):
        if start == 0:
            continue
        level = order[start:stop]
        lca[level] = torch.where(is_desc[level], level[:, None], lca[parent[level]])
    return is_anc, lca


def _path_weights(log_decay: Tensor, is_anc: Tensor, lca: Tensor, root: Tensor,
                  mode: str) -> Tensor:
    """S (L, L) for one channel from its log-decays (L,)."""
    log_decay = log_decay.clone()
    log_decay[root] = 0  # the root's decay weights no edge
    log_p = is_anc.to(log_decay.dtype) @ log_decay  # sum of log-decays on root -> v
    s = (log_p[:, None] + log_p[None, :] - 2 * log_p[lca]).exp()
    if mode == "subtree":
        s = s * is_anc.T.to(s.dtype)  # keep j in subtree(i): i is an ancestor of j
    return s


def dense_path_weights(decay: Tensor, order: Tensor, parent: Tensor, level_offsets: Tensor,
                       mode: str = "full") -> Tensor:
    """S (C, L, L) of one tree (order, parent, level_offsets of one batch row), decay (L, C)."""
    is_anc, lca = _ancestry(order, parent, level_offsets)
    return torch.stack([_path_weights(decay[:, c].log(), is_anc, lca, order[0], mode)
                        for c in range(decay.shape[1])])


def _recover_x(up: Tensor, decay: Tensor, order: Tensor, parent: Tensor) -> Tensor:
    """x[v] = up[v] - sum over children u of decay[u] * up[u] (inverts the up pass)."""
    child = order[:, 1:, None].expand(-1, -1, up.shape[2])  # every non-root vertex
    pulled = torch.gather(decay, 1, child) * torch.gather(up, 1, child)
    x = up.clone()
    x.scatter_add_(1, torch.gather(parent, 1, order[:, 1:])[..., None].expand_as(pulled), -pulled)
    return x


def _dense(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor, level_offsets: Tensor,
           mode: str, grad_y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Without grad_y: (S x, unused). With grad_y: (S^T g, dL/d decay).

    dS(i, j)/d decay[v] = S(i, j) / decay[v] when the edge (v, parent(v)) is on the i..j path,
    i.e. when exactly one of i, j lies in subtree(v). With M = S * (g x^T) and
    D[v, i] = [i in subtree(v)], the decay gradient is
    (rowsum(D M) + rowsum(D M^T) - 2 diag(D M D^T)) / decay.
    """
    out = torch.zeros_like(x)
    grad_decay = torch.zeros_like(x)
    for b in range(x.shape[0]):
        is_anc, lca = _ancestry(order[b], parent[b], level_offsets[b])
        root = order[b, 0]
        in_subtree = is_anc.T.to(x.dtype)
        for c in range(x.shape[2]):  # per channel keeps memory at a few L x L matrices
            s = _path_weights(decay[b, :, c].log(), is_anc, lca, root, mode)
            if grad_y is None:
                out[b, :, c] = s @ x[b, :, c]
                continue
            g = grad_y[b, :, c]
            out[b, :, c] = s.T @ g
            m = s * (g[:, None] * x[b, None, :, c])
            dm = in_subtree @ m
            crossing = dm.sum(1) + in_subtree @ m.sum(0) - 2 * (dm * in_subtree).sum(1)
            grad_decay[b, :, c] = crossing / decay[b, :, c]
            grad_decay[b, root, c] = 0
    return out, grad_decay


def scan_forward(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor, level_offsets: Tensor,
                 mode: str) -> tuple[Tensor, Tensor]:
    """(y, up) by dense matrix products; up is the subtree scan (== y for mode 'subtree')."""
    up, _ = _dense(x, decay, order, parent, level_offsets, "subtree")
    if mode == "subtree":
        return up, up
    return _dense(x, decay, order, parent, level_offsets, "full")[0], up


def scan_backward(grad_y: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                  level_offsets: Tensor, up: Tensor, y: Tensor, mode: str
                  ) -> tuple[Tensor, Tensor]:
    """(grad_x, grad_decay) from the dense S and its derivative (y is unused).

    The decay gradient depends on x, which the backward interface does not carry; it is
    recovered exactly from the up pass.
    """
    x = _recover_x(up, decay, order, parent)
    return _dense(x, decay, order, parent, level_offsets, mode, grad_y)
