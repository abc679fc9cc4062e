"""Dense O(L^2) tree scan: the test oracle (docs/design.md, "Tree scan semantics").

Builds the path-weight matrix S explicitly, per batch element and channel, and multiplies.
Everything is products of decays, never logarithms, so any finite decay works: 0, negative
values and values above 1 give exactly what the recurrences of the other implementations
give (a log-domain S would turn a 0 or a negative decay into NaN).

With D(v, j) the product of the decays on the path from j up to v when j lies in v's subtree
(D(v, v) = 1, else 0), the path i..j climbs from each end to lca(i, j), so
S(i, j) = D(lca, i) D(lca, j), and the subtree scan's matrix is D itself. The backward uses
the dense derivative of S: every (i, j) pair whose path crosses an edge contributes the
product of the other decays on that path (no division by a decay, which may be 0).
Forward is O(L^2) memory and time per channel: use only for tests.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["scan_forward", "scan_down", "scan_backward", "dense_path_weights"]


def _levels(order: Tensor, level_offsets: Tensor) -> list[Tensor]:
    """Vertex ids of each BFS level below the root, root level excluded."""
    L = order.numel()
    offsets = [o for o in level_offsets.tolist() if o < L] + [L]
    return [order[a:b] for a, b in zip(offsets[1:-1], offsets[2:])]


class _TreeTerms:
    """What S is built from for one tree, shared by the forward, the backward and
    ``dense_path_weights`` (the oracle must check every kernel against one definition)."""

    def __init__(self, order: Tensor, parent: Tensor, level_offsets: Tensor):
        L = order.numel()
        self.root = order[0]
        self.levels = _levels(order, level_offsets)
        self.parent = parent
        is_anc = torch.zeros(L, L, dtype=torch.bool, device=order.device)  # is_anc[i, v]
        is_anc[self.root, self.root] = True
        for level in self.levels:
            is_anc[level] = is_anc[parent[level]]
            is_anc[level, level] = True
        self.is_desc = is_anc.T.contiguous()  # is_desc[v, j]: j in v's subtree (or j == v)
        del is_anc
        # Row of i: lca(i, j) = i where j is in i's subtree, else lca(parent(i), j).
        self.lca = torch.empty(L, L, dtype=torch.long, device=order.device)
        self.lca[self.root] = self.root
        for level in self.levels:
            self.lca[level] = torch.where(self.is_desc[level], level[:, None],
                                          self.lca[parent[level]])
        self.columns = torch.arange(L, device=order.device)

    def subtree_weights(self, decay_c: Tensor) -> Tensor:
        """D (L, L) of one channel: D[v, j] = product of the decays on the path j -> v (the
        child end of each edge), for j in v's subtree; a column is its parent's column times
        its own decay, so parents' columns are complete before their children's."""
        L = decay_c.numel()
        d = decay_c.new_zeros(L, L)
        d[self.root, self.root] = 1
        for level in self.levels:
            d[:, level] = d[:, self.parent[level]] * decay_c[level]
            d[level, level] = 1
        return d

    def path_weights(self, d: Tensor) -> Tensor:
        """S (L, L) from D: S(i, j) = D(lca, i) D(lca, j)."""
        return d[self.lca, self.columns[:, None]] * d[self.lca, self.columns[None, :]]


def dense_path_weights(decay: Tensor, order: Tensor, parent: Tensor, level_offsets: Tensor,
                       mode: str = "full") -> Tensor:
    """S (C, L, L) of one tree (order, parent, level_offsets of one batch row), decay (L, C);
    for mode "subtree" the matrix of the subtree scan (S restricted to j in i's subtree)."""
    terms = _TreeTerms(order, parent, level_offsets)
    mats = [terms.subtree_weights(decay[:, c]) for c in range(decay.shape[1])]
    if mode == "full":
        mats = [terms.path_weights(d) for d in mats]
    return torch.stack(mats)


def _recover_x(up: Tensor, decay: Tensor, order: Tensor, parent: Tensor) -> Tensor:
    """x[v] = up[v] - sum over children u of decay[u] * up[u] (inverts the up pass)."""
    child = order[:, 1:, None].expand(-1, -1, up.shape[2])  # every non-root vertex
    pulled = torch.gather(decay, 1, child) * torch.gather(up, 1, child)
    x = up.clone()
    x.scatter_add_(1, torch.gather(parent, 1, order[:, 1:])[..., None].expand_as(pulled), -pulled)
    return x


def _dense_forward(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                   level_offsets: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """(S x, D x): the full scan (zeros for mode 'subtree') and the subtree scan."""
    y = torch.zeros_like(x)
    up = torch.zeros_like(x)
    for b in range(x.shape[0]):
        terms = _TreeTerms(order[b], parent[b], level_offsets[b])
        for c in range(x.shape[2]):  # per channel keeps memory at a few L x L matrices
            d = terms.subtree_weights(decay[b, :, c])
            up[b, :, c] = d @ x[b, :, c]
            if mode == "full":
                y[b, :, c] = terms.path_weights(d) @ x[b, :, c]
    return y, up


def _dense_backward(x: Tensor, grad_y: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                    level_offsets: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """(grad_x, dL/d decay) of L = g . (S x) from the dense matrices.

    The edge (v, p = parent(v)) lies on the path i..j iff exactly one of i, j is in v's
    subtree; then dS(i, j)/d decay[v] = D(v, i) S(p, j) (i inside). Summing g_i x_j over
    those pairs: grad[v] = (D g)[v] (S_out x)[v] + (D x)[v] (S_out g)[v], where row v of S_out
    is S(p, .) restricted to the vertices outside v's subtree. Subtree mode (y = D x): the
    path j -> i crosses the edge iff v is strictly below i and j in v's subtree, with
    derivative D(i, p) D(v, j), so grad[v] = (D^T g)[p] (D x)[v].
    """
    grad_x = torch.zeros_like(x)
    grad_decay = torch.zeros_like(x)
    for b in range(x.shape[0]):
        terms = _TreeTerms(order[b], parent[b], level_offsets[b])
        par = parent[b].clamp_min(0)  # the root's row is zeroed at the end
        outside = ~terms.is_desc
        for c in range(x.shape[2]):
            d = terms.subtree_weights(decay[b, :, c])
            g, xc = grad_y[b, :, c], x[b, :, c]
            if mode == "subtree":
                dt_g = d.T @ g
                grad_x[b, :, c] = dt_g
                grad_decay[b, :, c] = dt_g[par] * (d @ xc)
            else:
                s = terms.path_weights(d)
                grad_x[b, :, c] = s.T @ g
                s_out = s[par] * outside
                grad_decay[b, :, c] = (d @ g) * (s_out @ xc) + (d @ xc) * (s_out @ g)
            grad_decay[b, terms.root, c] = 0
    return grad_x, grad_decay


def scan_forward(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor, level_offsets: Tensor,
                 mode: str) -> tuple[Tensor, Tensor]:
    """(y, up) by dense matrix products; up is the subtree scan (== y for mode 'subtree')."""
    y, up = _dense_forward(x, decay, order, parent, level_offsets, mode)
    return (up, up) if mode == "subtree" else (y, up)


def scan_down(up: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
              level_offsets: Tensor) -> Tensor:
    """y of mode 'full' from the up pass: S x, with x recovered exactly from up."""
    x = _recover_x(up, decay, order, parent)
    return _dense_forward(x, decay, order, parent, level_offsets, "full")[0]


def scan_backward(grad_y: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                  level_offsets: Tensor, up: Tensor, y: Tensor, mode: str
                  ) -> tuple[Tensor, Tensor]:
    """(grad_x, grad_decay) from the dense S and its derivative (y is unused).

    The decay gradient depends on x, which the backward interface does not carry; it is
    recovered exactly from the up pass.
    """
    x = _recover_x(up, decay, order, parent)
    return _dense_backward(x, grad_y, decay, order, parent, level_offsets, mode)
