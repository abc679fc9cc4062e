"""Property tests: every tree_scan backend agrees with the dense oracle on random trees."""
from __future__ import annotations

import random

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grootvl.ops import tree_scan
from test_tree_scan import _one_torch_thread, inputs, random_parents, tree_from_parents  # noqa: F401


@st.composite
def scan_cases(draw):
    B = draw(st.integers(0, 3))
    L = draw(st.integers(1, 24))
    C = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = random.Random(seed)
    parents = [random_parents(L, rng) for _ in range(B)]
    tree = tree_from_parents(parents, shuffle_seed=seed) if B else None
    mode = draw(st.sampled_from(["full", "subtree"]))
    return tree, B, L, C, seed, mode


@settings(max_examples=40, deadline=None)
@given(scan_cases())
def test_backends_match_oracle_forward_and_backward(case):
    tree, B, L, C, seed, mode = case
    if tree is None:
        return  # empty batches are covered in test_tree_scan.py
    x, decay = inputs(B, L, C, seed=seed % 1000, low=0.05)
    grad = torch.randn(B, L, C, dtype=torch.float64)
    results = {}
    for impl in ("reference", "torch", "numba"):
        xx, dd = x.clone().requires_grad_(True), decay.clone().requires_grad_(True)
        y = tree_scan(xx, dd, tree, mode, impl=impl)
        y.backward(grad)
        results[impl] = (y.detach(), xx.grad, dd.grad)
    for impl in ("torch", "numba"):
        for got, want in zip(results[impl], results["reference"]):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(scan_cases())
def test_full_scan_is_symmetric_operator(case):
    # y = S x with S symmetric: <S e_i, e_j> == <e_i, S e_j>, checked as <S a, b> == <a, S b>
    tree, B, L, C, seed, mode = case
    if tree is None:
        return
    a, decay = inputs(B, L, C, seed=seed % 1000)
    b = torch.randn(B, L, C, dtype=torch.float64)
    lhs = (tree_scan(a, decay, tree, "full", impl="numba") * b).sum((1,))
    rhs = (a * tree_scan(b, decay, tree, "full", impl="numba")).sum((1,))
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
