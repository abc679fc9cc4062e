"""Tree scan with plain tensor ops, on any device.

The passes are those of docs/design.md, "Forward and backward passes".

Works in breadth-first position space: row i of a permuted tensor is vertex order[b, i], so a
BFS level is a contiguous range of rows. Each pass loops over levels (not vertices) and moves
a whole level of every batch element with one gather and one scatter. Levels have different
widths per batch element; they are padded to the widest, and padding points at an extra
dummy row L (the padding value of level_offsets), whose input and decay are zero.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["scan_forward", "scan_down", "scan_backward"]


class _Levels:
    """Per-level (B, width) row positions of each level and of their parents, BFS space."""

    def __init__(self, order: Tensor, parent: Tensor, level_offsets: Tensor):
        B, L = order.shape
        device = order.device
        self.order = order
        arange = torch.arange(L, device=device)
        position = torch.empty_like(order)  # position[b, v]: BFS rank of vertex v
        position.scatter_(1, order, arange.expand(B, L))
        parent_in_order = torch.gather(parent, 1, order)
        parent_position = torch.gather(position, 1, parent_in_order.clamp_min(0))
        parent_position[:, 0] = L  # the root's parent is the dummy row
        # One extra entry so padded positions (== L) map to the dummy row too.
        self.parent_position = torch.cat(
            [parent_position, torch.full((B, 1), L, dtype=order.dtype, device=device)], dim=1)
        starts, stops = level_offsets[:, :-1], level_offsets[:, 1:]
        widths = (stops - starts).amax(dim=0).tolist() if B else []
        self.rows: list[Tensor] = []  # rows[d]: (B, widths[d]) positions, padding == L
        for d, width in enumerate(widths):
            pos = starts[:, d:d + 1] + torch.arange(width, device=device)
            self.rows.append(torch.where(pos < stops[:, d:d + 1], pos, L))
        self.parent_rows = [torch.gather(self.parent_position, 1, r) for r in self.rows]

    def permute_in(self, t: Tensor) -> Tensor:
        """(B, L, C) vertex-indexed -> (B, L + 1, C) BFS-indexed with a zero dummy row."""
        B, L, C = t.shape
        out = t.new_zeros(B, L + 1, C)
        out[:, :L] = torch.gather(t, 1, self.order[..., None].expand(B, L, C))
        return out

    def permute_out(self, t: Tensor) -> Tensor:
        """(B, L + 1, C) BFS-indexed -> (B, L, C) vertex-indexed."""
        B, L = self.order.shape
        C = t.shape[2]
        out = t.new_empty(B, L, C)
        out.scatter_(1, self.order[..., None].expand(B, L, C), t[:, :L])
        return out


def _take(t: Tensor, rows: Tensor) -> Tensor:
    return torch.gather(t, 1, rows[..., None].expand(-1, -1, t.shape[2]))


def _put(t: Tensor, rows: Tensor, value: Tensor) -> None:
    t.scatter_(1, rows[..., None].expand_as(value), value)


def _up_pass(levels: _Levels, src: Tensor, lam: Tensor) -> Tensor:
    """up[v] = src[v] + sum over children u of lam[u] * up[u]; BFS space, returns a new tensor."""
    up = src.clone()
    for rows, parents in zip(reversed(levels.rows[1:]), reversed(levels.parent_rows[1:])):
        pulled = _take(lam, rows) * _take(up, rows)
        up.scatter_add_(1, parents[..., None].expand_as(pulled), pulled)
    up[:, -1] = 0  # the dummy row collected the (zero) padding contributions
    return up


def _down_pass(levels: _Levels, up: Tensor, lam: Tensor) -> Tensor:
    """y[root] = up[root]; y[v] = up[v] * (1 - lam[v]^2) + lam[v] * y[parent]."""
    y = up.clone()
    for rows, parents in zip(levels.rows[1:], levels.parent_rows[1:]):
        lam_v = _take(lam, rows)
        _put(y, rows, _take(up, rows) * (1 - lam_v * lam_v) + lam_v * _take(y, parents))
    y[:, -1] = 0
    return y


def scan_forward(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor, level_offsets: Tensor,
                 mode: str) -> tuple[Tensor, Tensor]:
    """(y, up): y the scan (docs/design.md, "Tree scan semantics"), up its up pass (subtree scan)."""
    levels = _Levels(order, parent, level_offsets)
    lam = levels.permute_in(decay)
    up = _up_pass(levels, levels.permute_in(x), lam)
    up_out = levels.permute_out(up)
    if mode == "subtree":
        return up_out, up_out
    return levels.permute_out(_down_pass(levels, up, lam)), up_out


def scan_down(up: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
              level_offsets: Tensor) -> Tensor:
    """y of mode 'full' from its up pass (the second half of ``scan_forward``)."""
    levels = _Levels(order, parent, level_offsets)
    return levels.permute_out(_down_pass(levels, levels.permute_in(up), levels.permute_in(decay)))


def scan_backward(grad_y: Tensor, decay: Tensor, order: Tensor, parent: Tensor,
                  level_offsets: Tensor, up: Tensor, y: Tensor, mode: str
                  ) -> tuple[Tensor, Tensor]:
    """(grad_x, grad_decay) by the closed forms (docs/design.md, "Forward and backward
    passes"); grad_decay is 0 at the root."""
    levels = _Levels(order, parent, level_offsets)
    lam = levels.permute_in(decay)
    up_b = levels.permute_in(up)
    parent_rows = levels.parent_position[..., None].expand_as(lam)
    if mode == "subtree":
        # a[v] = g[v] + lam[v] * a[parent]: a down pass without the (1 - lam^2) factor.
        a = levels.permute_in(grad_y)
        for rows, parents in zip(levels.rows[1:], levels.parent_rows[1:]):
            _put(a, rows, _take(a, rows) + _take(lam, rows) * _take(a, parents))
        a[:, -1] = 0
        grad_lam = torch.gather(a, 1, parent_rows) * up_b
        grad_x = a
    else:
        up_g = _up_pass(levels, levels.permute_in(grad_y), lam)
        z = _down_pass(levels, up_g, lam)
        y_b = levels.permute_in(y)
        grad_lam = up_g * (torch.gather(y_b, 1, parent_rows) - lam * up_b) + \
            up_b * (torch.gather(z, 1, parent_rows) - lam * up_g)
        grad_x = z
    grad_lam[:, 0] = 0  # the root's decay weights no edge
    return levels.permute_out(grad_x), levels.permute_out(grad_lam)
