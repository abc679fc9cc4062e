"""tree_scan for any finite decay (0, negative, above 1) and with aliased inputs.

The recurrences need no range for the decays, so every implementation must agree with the
dense oracle on any finite value, and the oracle itself must equal the plain definition
(products of decays along tree paths) there. ``overwrite_inputs=True`` on inputs that share
memory must give the out-of-place result.
"""
from __future__ import annotations

import random

import pytest
import torch

from grootvl.ops import tree_scan
from test_tree_scan import _one_torch_thread, random_parents, tree_from_parents  # noqa: F401

MODES = ["full", "subtree"]
FAST_IMPLS = ["torch", "numba"]
DECAYS = ["zero", "negative", "above_one", "mixed"]


def decays(kind: str, shape, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    if kind == "zero":
        return torch.zeros(shape, dtype=torch.float64)
    if kind == "negative":
        return -(0.1 + 0.9 * u)
    if kind == "above_one":
        return 1.05 + 0.5 * u
    mixed = 4 * u - 2
    mixed.view(-1)[::3] = 0.0
    return mixed


def path_product_scan(x, decay, parents, mode):
    """y[i] = sum_j S(i, j) x[j] with S the product of the child-end decays on the path
    i..j, by walking parent pointers (the definition, no shortcut)."""
    B, L, C = x.shape
    y = torch.zeros_like(x)
    for b in range(B):
        up = []
        for v in range(L):
            path = [v]
            while parents[b][path[-1]] >= 0:
                path.append(parents[b][path[-1]])
            up.append(path)
        for i in range(L):
            for j in range(L):
                meet = next(v for v in up[i] if v in up[j])
                if mode == "subtree" and meet != i:
                    continue
                edges = up[i][:up[i].index(meet)] + up[j][:up[j].index(meet)]
                weight = torch.ones(C, dtype=x.dtype)
                for v in edges:
                    weight = weight * decay[b, v]
                y[b, i] += weight * x[b, j]
    return y


@pytest.mark.parametrize("kind", DECAYS)
@pytest.mark.parametrize("mode", MODES)
def test_reference_is_the_path_product_definition_for_any_decay(kind, mode):
    parents = [random_parents(9, random.Random(s)) for s in (1, 2)]
    tree = tree_from_parents(parents)
    x = torch.randn(2, 9, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    decay = decays(kind, (2, 9, 3), seed=4)
    got = tree_scan(x, decay, tree, mode, impl="reference")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, path_product_scan(x, decay, parents, mode), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", DECAYS)
@pytest.mark.parametrize("mode", MODES)
def test_implementations_agree_for_any_decay(kind, mode):
    tree = tree_from_parents([random_parents(40, random.Random(s)) for s in (5, 6)])
    x = torch.randn(2, 40, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    decay = decays(kind, (2, 40, 5), seed=8)
    expected = tree_scan(x, decay, tree, mode, impl="reference")
    scale = expected.abs().max().item() + 1.0
    for impl in FAST_IMPLS:
        torch.testing.assert_close(tree_scan(x, decay, tree, mode, impl=impl), expected,
                                   rtol=0, atol=1e-12 * scale, msg=f"impl={impl}")


@pytest.mark.parametrize("mode", MODES)
def test_gradients_for_any_decay(mode):
    """gradcheck of the oracle's own backward (no division by a decay that may be 0) and the
    fast implementations' gradients against it."""
    tree = tree_from_parents([random_parents(7, random.Random(9))])
    x = torch.randn(1, 7, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    decay = decays("mixed", (1, 7, 2), seed=11)
    inputs = (x.requires_grad_(), decay.requires_grad_())
    assert torch.autograd.gradcheck(lambda a, d: tree_scan(a, d, tree, mode, impl="reference"),
                                    inputs)
    g = torch.randn(1, 7, 2, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    want = torch.autograd.grad(tree_scan(*inputs, tree, mode, impl="reference"), inputs, g)
    for impl in FAST_IMPLS:
        got = torch.autograd.grad(tree_scan(*inputs, tree, mode, impl=impl), inputs, g)
        for name, a, b in zip(("x", "decay"), got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=f"{impl} d/d{name}")


def _aliased(kind: str):
    gen = torch.Generator().manual_seed(13)
    n = 2 * 16 * 4
    if kind == "same":
        x = 0.2 + 0.7 * torch.rand(2, 16, 4, generator=gen)
        return x, x
    buf = 0.2 + 0.7 * torch.rand(n + 24, generator=gen)
    return buf[:n].view(2, 16, 4), buf[24:24 + n].view(2, 16, 4)  # overlapping windows


@pytest.mark.parametrize("kind", ["same", "overlap"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["numba", "torch", "reference"])
def test_overwrite_inputs_with_aliased_inputs(kind, mode, impl):
    tree = tree_from_parents([random_parents(16, random.Random(s)) for s in (14, 15)])
    x, decay = _aliased(kind)
    x_before, decay_before = x.clone(), decay.clone()
    expected = tree_scan(x_before, decay_before, tree, mode, impl=impl)
    got = tree_scan(x, decay, tree, mode, impl=impl, overwrite_inputs=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # detected: the scan ran out of place, so the inputs are intact
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)


def test_disjoint_views_of_one_buffer_still_scan_in_place():
    tree = tree_from_parents([random_parents(16, random.Random(16))])
    buf = 0.2 + 0.7 * torch.rand(2 * 16 * 4, generator=torch.Generator().manual_seed(17))
    x, decay = buf[:64].view(1, 16, 4), buf[64:].view(1, 16, 4)
    expected = tree_scan(x.clone(), decay.clone(), tree, "full", impl="numba")
    got = tree_scan(x, decay, tree, "full", impl="numba", overwrite_inputs=True)
    torch.testing.assert_close(got, expected)
    assert got.data_ptr() == decay.data_ptr()  # the in-place path: y in decay's memory
