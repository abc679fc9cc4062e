"""Worker-side attacks on ``tree_scan``: decays outside (0, 1], aliased buffers, bad input.

The oracle here is written independently of grootvl: it walks parent pointers and
multiplies the decays along each path, so it needs no range for the decays. The trees are
built here too (random parent arrays, breadth-first order by hand).
"""
from __future__ import annotations

import os
import random

from .pyfuncs import _import
from .worker import Silent, Unavailable

# ------------------------------------------------------------------------------ tree scan

def _tree(batch: int, length: int, seed: int):
    """Random rooted trees built here (not by grootvl): (Tree, parent lists)."""
    import torch

    (Tree,) = _import("grootvl.ops", "Tree")
    rng = random.Random(seed)
    orders, parents, offsets = [], [], []
    for _ in range(batch):
        labels = list(range(length))
        rng.shuffle(labels)
        parent = [-1] * length
        for i in range(1, length):
            parent[labels[i]] = labels[rng.randrange(i)]
        levels, frontier = [], [labels[0]]
        while frontier:
            levels.append(frontier)
            frontier = sorted(v for v in range(length) if parent[v] in set(frontier))
        orders.append([v for level in levels for v in level])
        offs = [0]
        for level in levels:
            offs.append(offs[-1] + len(level))
        offsets.append(offs)
        parents.append(parent)
    width = max(len(o) for o in offsets)
    offsets = [o + [length] * (width - len(o)) for o in offsets]
    tree = Tree(torch.tensor(orders), torch.tensor(parents), torch.tensor(offsets))
    return tree, parents


def _oracle(x, decay, parents, mode):
    """y[i] = sum_j S(i, j) x[j], S the product of the decays of the child ends on the path
    i..j (mode 'subtree': only j in i's subtree). Plain loops, any decay values."""
    import torch

    B, L, C = x.shape
    y = torch.zeros(B, L, C, dtype=torch.float64)
    for b in range(B):
        paths = []
        for v in range(L):
            path = [v]
            while parents[b][path[-1]] >= 0:
                path.append(parents[b][path[-1]])
            paths.append(path)
        for i in range(L):
            for j in range(L):
                on_j = set(paths[j])
                lca = next(v for v in paths[i] if v in on_j)
                if mode == "subtree" and lca != i:
                    continue
                weight = torch.ones(C, dtype=torch.float64)
                for v in paths[i][:paths[i].index(lca)] + paths[j][:paths[j].index(lca)]:
                    weight = weight * decay[b, v].double()
                y[b, i] += weight * x[b, j].double()
    return y


def _decays(kind: str, shape, gen):
    import torch

    if kind == "one":
        return torch.ones(shape, dtype=torch.float64)
    if kind == "zero":
        return torch.zeros(shape, dtype=torch.float64)
    if kind == "negative":
        return -(0.1 + 0.9 * torch.rand(shape, generator=gen, dtype=torch.float64))
    if kind == "above_one":
        return 1.1 + torch.rand(shape, generator=gen, dtype=torch.float64)
    d = 4 * torch.rand(shape, generator=gen, dtype=torch.float64) - 2  # mixed, with zeros
    d.view(-1)[::5] = 0.0
    return d


def _check_impl(impl: str) -> None:
    if impl == "triton":
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise Unavailable("triton needs TRITON_INTERPRET=1 on a CPU-only machine")
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            raise Unavailable(f"triton: {exc}") from None


def _compare(got, want, what: str, tol: float = 1e-9) -> str:
    import torch

    if not torch.isfinite(got).all():
        raise Silent(f"{what}: non-finite values where the oracle has "
                     f"{'finite' if torch.isfinite(want).all() else 'non-finite'} ones")
    err = float((got.double() - want).abs().max()) if got.numel() else 0.0
    scale = float(want.abs().max()) + 1.0 if want.numel() else 1.0
    if err > tol * scale:
        raise Silent(f"{what}: max |got - oracle| = {err:.3g} (scale {scale:.3g})")
    return f"max error {err:.2g}"


def scan_decays(fx, case_dir, impl: str, mode: str, kind: str) -> str:
    import torch

    _check_impl(impl)
    (tree_scan,) = _import("grootvl.ops", "tree_scan")
    tree, parents = _tree(2, 7, seed=1)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 7, 3, generator=gen, dtype=torch.float64)
    decay = _decays(kind, (2, 7, 3), gen)
    y = tree_scan(x, decay, tree, mode=mode, impl=impl)
    return _compare(y, _oracle(x, decay, parents, mode), f"{impl} decay={kind}")


def scan_decay_grads(fx, case_dir, impl: str, mode: str) -> str:
    """Gradients in x and decay (decays with zeros, negatives and values above 1) against
    central differences of the oracle."""
    import torch

    _check_impl(impl)
    (tree_scan,) = _import("grootvl.ops", "tree_scan")
    tree, parents = _tree(1, 6, seed=3)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 6, 2, generator=gen, dtype=torch.float64)
    decay = _decays("mixed", (1, 6, 2), gen)
    w = torch.randn(1, 6, 2, generator=gen, dtype=torch.float64)
    xg, dg = x.clone().requires_grad_(), decay.clone().requires_grad_()
    (tree_scan(xg, dg, tree, mode=mode, impl=impl) * w).sum().backward()
    notes = []
    for name, tensor, grad in (("x", x, xg.grad), ("decay", decay, dg.grad)):
        numeric = torch.zeros_like(tensor)
        for k in range(tensor.numel()):
            values = []
            for step in (1e-6, -1e-6):
                moved = tensor.clone()
                moved.view(-1)[k] += step
                args = (moved, decay) if name == "x" else (x, moved)
                values.append(float((_oracle(*args, parents, mode) * w).sum()))
            numeric.view(-1)[k] = (values[0] - values[1]) / 2e-6
        notes.append(_compare(grad, numeric, f"{impl} d/d{name}", tol=1e-6))
    return "; ".join(notes)


def scan_alias(fx, case_dir, impl: str, mode: str, alias: str) -> str:
    """overwrite_inputs=True with x and decay sharing memory must equal the plain scan."""
    import torch

    _check_impl(impl)
    (tree_scan,) = _import("grootvl.ops", "tree_scan")
    tree, _ = _tree(2, 7, seed=5)
    gen = torch.Generator().manual_seed(6)
    n = 2 * 7 * 3
    if alias == "same":
        x = decay = 0.2 + 0.7 * torch.rand(2, 7, 3, generator=gen, dtype=torch.float64)
    else:  # overlapping windows of one buffer
        buf = 0.2 + 0.7 * torch.rand(n + 9, generator=gen, dtype=torch.float64)
        x, decay = buf[:n].view(2, 7, 3), buf[9:9 + n].view(2, 7, 3)
    want = tree_scan(x.clone(), decay.clone(), tree, mode=mode, impl=impl)
    got = tree_scan(x, decay, tree, mode=mode, impl=impl, overwrite_inputs=True)
    return _compare(got, want, f"{impl} aliased ({alias}) vs not aliased")


def scan_bad(fx, case_dir, variant: str):
    import torch

    ops = _import("grootvl.ops")
    tree, _ = _tree(2, 7, seed=7)
    x = torch.rand(2, 7, 3)
    decay = torch.rand(2, 7, 3)
    kwargs = {}
    if variant == "int-x":
        x = torch.ones(2, 7, 3, dtype=torch.long)
    elif variant == "shape-mismatch":
        decay = torch.rand(2, 7, 4)
    elif variant == "x-2d":
        x, decay = x[0], decay[0]
    elif variant == "mode-bogus":
        kwargs["mode"] = "bogus"
    elif variant == "impl-bogus":
        kwargs["impl"] = "bogus"
    elif variant == "tree-batch":
        tree, _ = _tree(3, 7, seed=7)
    elif variant == "tree-length":
        tree, _ = _tree(2, 6, seed=7)
    elif variant == "tree-not-tree":
        tree = (tree.order, tree.parent, tree.level_offsets)
    elif variant == "tree-int32":
        tree = ops.Tree(tree.order.int(), tree.parent.int(), tree.level_offsets.int())
    elif variant == "empty-batch":
        tree = ops.Tree(*(t[:0] for t in (tree.order, tree.parent, tree.level_offsets)))
        x, decay = x[:0], decay[:0]
    y = ops.tree_scan(x, decay, tree, **kwargs)
    return f"returned shape {tuple(y.shape)}"
