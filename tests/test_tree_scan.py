"""tree_scan against the dense oracle, gradients, dtypes, errors, torch.compile
(docs/design.md, "Tree scan semantics")."""
from __future__ import annotations

import random

import pytest
import torch

from grootvl.ops import Tree, grid_tree, tree_scan
from grootvl.ops.tree_scan import default_impl

IMPLS = ["reference", "torch", "numba"]
FAST_IMPLS = ["torch", "numba"]
MODES = ["full", "subtree"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Many tiny ops: with the 2 cores shared by other jobs, intra-op threads only wait on
    # each other (100x slower). Restored so other test modules are unaffected.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tree_from_parents(parents: list[list[int]], shuffle_seed: int | None = None) -> Tree:
    """Breadth-first Tree from parent lists (-1 at the root); children visited in id order,
    or in a shuffled order when shuffle_seed is given (another valid BFS of the same tree)."""
    rng = random.Random(shuffle_seed)
    orders, offsets = [], []
    for par in parents:
        L = len(par)
        children = [[] for _ in range(L)]
        for v, p in enumerate(par):
            if p >= 0:
                children[p].append(v)
        level = [par.index(-1)]
        order, offs = [], [0]
        while level:
            order += level
            offs.append(len(order))
            nxt = []
            for v in level:
                kids = list(children[v])
                if shuffle_seed is not None:
                    rng.shuffle(kids)
                nxt += kids
            if shuffle_seed is not None:
                rng.shuffle(nxt)  # any order within a level is breadth-first
            level = nxt
        orders.append(order)
        offsets.append(offs)
    depth = max((len(o) for o in offsets), default=1)
    L = len(parents[0]) if parents else 0
    offsets = [o + [L] * (depth - len(o)) for o in offsets]
    return Tree(torch.tensor(orders, dtype=torch.long).view(len(parents), L),
                torch.tensor(parents, dtype=torch.long).view(len(parents), L),
                torch.tensor(offsets, dtype=torch.long).view(len(parents), depth))


def chain(L: int, root_last: bool = False) -> list[int]:
    return [v + 1 if v + 1 < L else -1 for v in range(L)] if root_last else \
        [v - 1 for v in range(L)]


def star(L: int, center: int = 0) -> list[int]:
    return [-1 if v == center else center for v in range(L)]


def random_parents(L: int, rng: random.Random) -> list[int]:
    perm = list(range(L))
    rng.shuffle(perm)
    par = [-1] * L
    for k in range(1, L):
        par[perm[k]] = perm[rng.randrange(k)]
    return par


def inputs(B, L, C, dtype=torch.float64, seed=0, low=0.1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, C, generator=gen, dtype=dtype)
    decay = low + (1 - low) * torch.rand(B, L, C, generator=gen, dtype=dtype)
    return x, decay


def grid_mst(B, H, W, seed=0) -> Tree:
    return grid_tree(torch.randn(B, 4, H, W, generator=torch.Generator().manual_seed(seed)))


TREES = {
    "chain": lambda rng: tree_from_parents([chain(23), chain(23, root_last=True)]),
    "star": lambda rng: tree_from_parents([star(19), star(19, center=7)]),
    "random": lambda rng: tree_from_parents([random_parents(31, rng) for _ in range(3)]),
    "grid_mst": lambda rng: grid_mst(2, 6, 9),
}


@pytest.mark.parametrize("kind", list(TREES))
@pytest.mark.parametrize("channels", [1, 3, 16])
@pytest.mark.parametrize("mode", MODES)
def test_matches_dense_oracle(kind, channels, mode):
    tree = TREES[kind](random.Random(channels))
    x, decay = inputs(tree.batch_size, tree.num_vertices, channels, seed=channels)
    expected = tree_scan(x, decay, tree, mode, impl="reference")
    for impl in FAST_IMPLS:
        torch.testing.assert_close(tree_scan(x, decay, tree, mode, impl=impl), expected,
                                   rtol=0, atol=1e-10, msg=f"impl={impl}")


def test_oracle_on_known_chain():
    # chain 0-1-2 rooted at 0 with decays (unused, a, b): S = [[1, a, ab], [a, 1, b], [ab, b, 1]]
    tree = tree_from_parents([[-1, 0, 1]])
    a, b = 0.5, 0.25
    decay = torch.tensor([[[0.9], [a], [b]]], dtype=torch.float64)
    x = torch.tensor([[[1.0], [10.0], [100.0]]], dtype=torch.float64)
    full = torch.tensor([1 + 10 * a + 100 * a * b, a + 10 + 100 * b, a * b + 10 * b + 100])
    subtree = torch.tensor([1 + 10 * a + 100 * a * b, 10 + 100 * b, 100])
    for impl in IMPLS:
        torch.testing.assert_close(tree_scan(x, decay, tree, "full", impl=impl)[0, :, 0],
                                   full.double())
        torch.testing.assert_close(tree_scan(x, decay, tree, "subtree", impl=impl)[0, :, 0],
                                   subtree.double())


def test_matches_dense_oracle_64x64_grid():
    tree = grid_mst(1, 64, 64, seed=3)
    x, decay = inputs(1, 64 * 64, 2, seed=3, low=0.5)
    for mode in MODES:
        expected = tree_scan(x, decay, tree, mode, impl="reference")
        for impl in FAST_IMPLS:
            torch.testing.assert_close(tree_scan(x, decay, tree, mode, impl=impl), expected,
                                       rtol=0, atol=1e-10, msg=f"impl={impl} mode={mode}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_independent_of_breadth_first_order(impl, mode):
    rng = random.Random(5)
    parents = [random_parents(40, rng) for _ in range(2)]
    first, second = tree_from_parents(parents), tree_from_parents(parents, shuffle_seed=1)
    assert not torch.equal(first.order, second.order)
    x, decay = inputs(2, 40, 3)
    torch.testing.assert_close(tree_scan(x, decay, first, mode, impl=impl),
                               tree_scan(x, decay, second, mode, impl=impl), rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(impl, mode):
    tree = tree_from_parents([random_parents(9, random.Random(1)), star(9, center=4)])
    x, decay = inputs(2, 9, 2, low=0.2)
    decay[0, 3] = 1.0  # the closed interval end
    x.requires_grad_(True)
    decay.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, d: tree_scan(a, d, tree, mode, impl=impl),
                                    (x, decay))


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_backward_matches_oracle_and_root_decay_gets_no_gradient(impl, mode):
    tree = grid_mst(2, 5, 6, seed=2)
    x, decay = inputs(2, 30, 4)
    grad = torch.randn(2, 30, 4, dtype=torch.float64)
    grads = {}
    for name in ("reference", impl):
        xx, dd = x.clone().requires_grad_(True), decay.clone().requires_grad_(True)
        tree_scan(xx, dd, tree, mode, impl=name).backward(grad)
        grads[name] = (xx.grad, dd.grad)
    for got, want in zip(grads[impl], grads["reference"]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    root = tree.order[:, 0]
    assert torch.all(grads[impl][1][torch.arange(2), root] == 0)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_dtypes(impl, dtype):
    tree = grid_mst(2, 7, 7)
    x64, decay64 = inputs(2, 49, 5)
    expected = tree_scan(x64, decay64, tree, impl="torch")
    x, decay = x64.to(dtype).requires_grad_(True), decay64.to(dtype).requires_grad_(True)
    y = tree_scan(x, decay, tree, impl=impl)
    assert y.dtype == dtype
    # inputs are rounded to dtype; the scan itself runs in float32
    rounded = tree_scan(x.detach().double(), decay.detach().double(), tree, impl="torch")
    tol = 1e-4 if dtype == torch.float32 else 2e-2 * rounded.abs().max().item()
    torch.testing.assert_close(y.double(), rounded, rtol=0, atol=tol)
    if dtype == torch.float32:
        torch.testing.assert_close(y.double(), expected, rtol=0, atol=1e-4)
    y.sum().backward()
    assert x.grad.dtype == dtype and decay.grad.dtype == dtype


def test_autocast_runs_scan_in_float32():
    tree = grid_mst(1, 6, 6)
    x, decay = inputs(1, 36, 8, dtype=torch.float32)
    expected = tree_scan(x, decay, tree)
    lin = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = tree_scan(x, decay, tree)
        h = lin(x)  # bfloat16 under autocast
        y_mixed = tree_scan(h, decay, tree)
        y_half = tree_scan(h, decay.bfloat16(), tree)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, expected)
    assert h.dtype == torch.bfloat16
    assert y_mixed.dtype == torch.float32  # usual type promotion of (x, decay)
    torch.testing.assert_close(y_mixed, tree_scan(h.float(), decay, tree))
    assert y_half.dtype == torch.bfloat16
    torch.testing.assert_close(y_half.float(), tree_scan(h.float(), decay.bfloat16().float(),
                                                         tree).bfloat16().float())


def test_torch_compile_gives_same_result_and_gradients():
    tree = grid_mst(2, 5, 5)
    x, decay = inputs(2, 25, 3, dtype=torch.float32)

    def f(a, d):
        return (tree_scan(a.sin(), d, tree) * 2).sum(-1)

    # fullgraph=True: the wrapper traces without graph breaks. aot_eager exercises the fake
    # impls and the autograd registration; inductor would add ~2 minutes of C++ compilation.
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    outs = []
    for fn in (f, compiled):
        a, d = x.clone().requires_grad_(True), decay.clone().requires_grad_(True)
        y = fn(a, d)
        y.pow(2).sum().backward()
        outs.append((y, a.grad, d.grad))
    for got, want in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, want)


def test_custom_op_registration_passes_opcheck():
    tree = grid_mst(1, 4, 4)
    x, decay = inputs(1, 16, 2)
    for mode in MODES:
        args = (x.requires_grad_(True), decay.requires_grad_(True), tree.order, tree.parent,
                tree.level_offsets, mode, "numba")
        torch.library.opcheck(torch.ops.grootvl.tree_scan.default, args,
                              test_utils=("test_schema", "test_faketensor",
                                          "test_autograd_registration"))


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batch_single_vertex_and_non_contiguous(impl):
    empty = Tree(torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, 5, dtype=torch.long),
                 torch.zeros(0, 2, dtype=torch.long))
    x, decay = inputs(0, 5, 3)
    assert tree_scan(x, decay, empty, impl=impl).shape == (0, 5, 3)
    single = tree_from_parents([[-1], [-1]])
    x, decay = inputs(2, 1, 3)
    for mode in MODES:
        torch.testing.assert_close(tree_scan(x, decay, single, mode, impl=impl), x)
    tree = grid_mst(2, 3, 4)
    x, decay = inputs(2, 12, 6)
    x_t = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    decay_t = decay[:, :, ::2].repeat_interleave(2, -1)
    torch.testing.assert_close(tree_scan(x_t, decay_t, tree, impl=impl),
                               tree_scan(x.contiguous(), decay_t.contiguous(), tree, impl=impl))


def test_default_impl():
    assert default_impl(torch.device("cpu")) == "numba"


def test_bad_inputs_name_the_argument():
    tree = grid_mst(2, 3, 3)
    x, decay = inputs(2, 9, 4)
    cases = [
        ((x, decay[:, :, :2], tree), {}, "decay"),
        ((x[:1], decay[:1], tree), {}, "batch size"),
        ((x[:, :8], decay[:, :8], tree), {}, "vertices"),
        ((x[0], decay[0], tree), {}, "x must be"),
        ((x.long(), decay, tree), {}, "x must be a floating"),
        ((x, decay.int(), tree), {}, "decay must be a floating"),
        ((x, decay.to("meta"), tree), {}, "same device"),
        ((x, decay, tree), {"mode": "causal"}, "mode"),
        ((x, decay, tree), {"impl": "cuda"}, "unknown impl"),
        ((x, decay, tree), {"impl": "triton"}, "CUDA only"),
        ((x, decay, Tree(tree.order.int(), tree.parent, tree.level_offsets)), {}, "tree.order"),
        ((x, decay, "tree"), {}, "grootvl.ops.Tree"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            tree_scan(*args, **kwargs)


def test_full_scan_forward_backward_allocates_at_most_four_times_x():
    from torch.profiler import ProfilerActivity, profile

    tree = grid_mst(2, 16, 16)
    x, decay = inputs(2, 256, 32, dtype=torch.float32)
    x.requires_grad_(True)
    decay.requires_grad_(True)
    grad = torch.randn_like(x)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        tree_scan(x, decay, tree, impl="numba").backward(grad)
    live = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in
                            prof.profiler.kineto_results.events() if e.name() == "[memory]"):
        live += nbytes
        peak = max(peak, live)
    size = x.numel() * x.element_size()
    assert 4 * size <= peak <= 4 * size + 64 * 1024  # y, up, grad_x, grad_decay + small change


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_overwrite_inputs_gives_the_same_result(mode, dtype):
    tree = grid_mst(2, 6, 9)
    x, decay = inputs(2, 54, 5, dtype=dtype)
    expected = tree_scan(x, decay, tree, mode, impl="numba")
    with torch.no_grad():
        xw, dw = x.clone(), decay.clone()
        got = tree_scan(xw, dw, tree, mode, impl="numba", overwrite_inputs=True)
    assert got.data_ptr() == (dw if mode == "full" else xw).data_ptr()  # worked in place
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # a permission, not a demand: with autograd or a backend without it, inputs are kept
    for impl in ("torch", "numba"):
        xg = x.clone().requires_grad_(impl == "numba")
        out = tree_scan(xg, decay, tree, mode, impl=impl, overwrite_inputs=True)
        torch.testing.assert_close(xg.detach(), x, rtol=0, atol=0)
        torch.testing.assert_close(out.detach(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_numba_backward_in_grad_y_memory_gives_the_same_gradients(mode):
    from grootvl.ops import scan_numba
    tree = grid_mst(2, 6, 9, seed=3)
    x, decay = inputs(2, 54, 5)
    y, up = scan_numba.scan_forward(x, decay, tree.order, tree.parent, tree.level_offsets, mode)
    grad_y = torch.randn_like(y)
    args = (decay, tree.order, tree.parent, tree.level_offsets, up, y, mode)
    expected = scan_numba.scan_backward(grad_y, *args)
    work = grad_y.clone()
    got = scan_numba.scan_backward_inplace(work, *args)
    assert got[0].data_ptr() == work.data_ptr()
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_scan_down_recomputes_the_full_scan_from_its_up_pass(impl):
    """What selective_tree_scan's backward does with the up pass it saved."""
    from grootvl.ops.tree_scan import _backend
    tree = grid_mst(2, 5, 6, seed=4)
    x, decay = inputs(2, 30, 3, low=-1.5)  # any finite decay
    args = (tree.order, tree.parent, tree.level_offsets)
    y, up = _backend(impl).scan_forward(x, decay, *args, "full")
    got = _backend(impl).scan_down(up, decay, *args)
    exact = impl != "reference"  # the same down pass as the forward's (the oracle: dense S x)
    torch.testing.assert_close(got, y, rtol=0 if exact else 1e-12, atol=0 if exact else 1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_numba_inplace_forward_can_keep_decay(mode):
    """keep_decay: the up pass in x's memory, decay untouched, y new (mode 'full')."""
    from grootvl.ops import scan_numba
    tree = grid_mst(2, 6, 9, seed=5)
    x, decay = inputs(2, 54, 5, dtype=torch.float32)
    args = (tree.order, tree.parent, tree.level_offsets)
    y, up = scan_numba.scan_forward(x, decay, *args, mode)
    xw, dw = x.clone(), decay.clone()
    got = scan_numba.scan_forward_inplace(xw, dw, *args, mode, keep_decay=True)
    torch.testing.assert_close(dw, decay, rtol=0, atol=0)
    torch.testing.assert_close(xw, up, rtol=0, atol=0)
    torch.testing.assert_close(got, y, rtol=0, atol=0)
    assert (got.data_ptr() == xw.data_ptr()) == (mode == "subtree")


def test_inplace_op_registration_passes_opcheck():
    tree = grid_mst(1, 4, 4)
    x, decay = inputs(1, 16, 2)
    for mode in MODES:
        args = (x.clone(), decay.clone(), tree.order, tree.parent, tree.level_offsets, mode, "numba")
        torch.library.opcheck(torch.ops.grootvl.tree_scan_inplace.default, args,
                              test_utils=("test_schema", "test_faketensor"))
