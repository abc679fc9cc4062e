"""The vision Tree SSM layer of GrootV (docs/design.md, "The TreeSSM layer").

A selective state space layer whose state propagates over a minimum spanning tree of the
pixel grid instead of a 1-D sequence. For ablations the same layer can scan other graphs
(a raster chain, row and column chains, a random spanning tree) from one root or all
(docs/design.md, "Scan topologies"); the graphs are built in ``grootvl.ops``, the layer only
selects them and sums the scans of ``"cross"``. Parameter names and shapes are those of the
released GrootV checkpoints (``in_proj``, ``conv2d``, ``x_proj_weight``, ``dt_projs_weight``,
``dt_projs_bias``, ``A_logs``, ``Ds``, ``out_norm``, ``h_norm``, ``out_proj``), so their
state dicts load unchanged.

Layout: the layer works channels-last throughout. The guide, the scan input and the decays
are all (B, L, D) contiguous, which is what ``tree_scan`` wants, so the only layout changes
are the depthwise convolution's (its output is produced in channels-last memory format, so
viewing it back as (B, H, W, D) is free) and the copy ``grid_tree`` makes to compute edge
costs in the original's reduction order.

Execution paths, same numbers:
* with autograd (training, eager or compiled), everything after the depthwise convolution is one
  ``grootvl.ops.selective_tree_scan`` op, on any device: it keeps only its inputs, x_proj's
  small output, the decays and the scan's up pass for backward and recomputes the rest there
  (fused numba passes on CPU, torch compositions elsewhere), about a quarter of what autograd
  would keep;
* without autograd on CPU, the element-wise stages are fused numba kernels, Δ is never
  materialised and the tree scan works in the memory of its inputs;
* otherwise (GPU or compiled inference, tracing, ``lean_backward = False``) the
  element-wise stages are torch compositions (``impl="torch"`` of
  ``grootvl.ops.ssm_elementwise``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import Tree, grid_chain, grid_tree, random_grid_tree, tree_scan
from ..ops.arguments import check_int, check_real, is_int
from ..ops.linear import linear
from ..ops.selective_tree_scan import selective_tree_scan
from ..ops.ssm_elementwise import discretize, silu_project_discretize, ssm_output
from ..ops.tree import GRID_COSTS, autocast_off
from .inplace import linear_of

__all__ = ["ROOTS", "TOPOLOGIES", "TREE_COSTS", "Trees", "TreeSSM"]

TOPOLOGIES = ("tree", "raster", "cross", "random")
ROOTS = ("all", "first", "last")
TREE_COSTS = GRID_COSTS  # ("cosine", "l2", "l1")
Trees = Tree | tuple[Tree, Tree]  # what a layer scans over: one tree, or the two chains of cross


class TreeSSM(nn.Module):
    """Tree-topology selective state space layer on (B, H, W, C) channels-last features.

    Args:
        d_model: channels C of the input and output.
        d_state: state size N per channel; GrootV uses 1 (the only value the released
            model's output projection ``y = C·h`` supports).
        expand: d_inner = expand * d_model channels inside the layer.
        dt_rank: rank R of the Δ projection; ``None`` means ceil(d_model / 16).
        d_conv: kernel size of the depthwise convolution.
        dt_min, dt_max, dt_init_floor: range of the initial step size Δ.
        tree_cost: edge cost of the spanning tree of ``topology="tree"``: ``"cosine"``
            (GrootV), ``"l2"`` (squared Euclidean) or ``"l1"`` (Manhattan).
        scan_impl: ``tree_scan`` implementation (``None``: fastest for the device).
        tree_impl: implementation of the MSTs of ``"tree"`` and ``"random"``: ``"numba"``
            (CPU), ``"torch"`` or ``None`` (fastest for the device).
        topology: the graph the state propagates over (docs/design.md, "Scan topologies"):
            ``"tree"`` (the minimum spanning tree of the guide features, as GrootV);
            ``"raster"`` (the row-major chain, pixel i linked to pixel i + 1, as a 1-D Mamba
            reads an image); ``"cross"`` (the row-major and the column-major chain, scanned
            with the same inputs and decays and summed before ``h_norm``); ``"random"`` (the
            minimum spanning tree of random edge costs, drawn anew at every forward: a
            spanning tree that ignores the features).
        root: ``"all"`` (scan mode "full": every vertex receives every other; the trees are
            rooted at vertex 0 internally), ``"first"`` or ``"last"`` (one root at vertex 0 or
            H*W - 1, the first or last pixel in raster order, and scan mode "subtree": each
            vertex aggregates its own subtree). ``topology="raster", root="last"`` is a causal
            selective scan in raster order (pixel i sees pixels <= i).

    ``forward(x, tree=None)`` returns ``(out, tree)``: the ``Tree`` it scanned over, or for
    ``topology="cross"`` the tuple ``(row-major chain, column-major chain)``. Pass that back
    in to reuse it (tree sharing), otherwise it is built from this layer's guide features
    (chains are cached, not rebuilt). The scan path (x_proj to out_norm) runs in float32
    (float64 for float64 inputs), also under autocast.
    """

    #: With autograd, run the memory-lean ``selective_tree_scan`` (False: the plain
    #: composition of differentiable ops, which keeps every intermediate; same gradients).
    lean_backward: bool = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 1,
        expand: int = 2,
        dt_rank: int | None = None,
        d_conv: int = 3,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        tree_cost: str = "cosine",
        scan_impl: str | None = None,
        tree_impl: str | None = None,
        topology: str = "tree",
        root: str = "all",
    ) -> None:
        super().__init__()
        if d_state != 1:
            raise ValueError(
                f"d_state={d_state} is not supported: the GrootV output y = C·h has one state "
                "per channel; use d_state=1"
            )
        if not is_int(d_conv) or d_conv < 1 or d_conv % 2 == 0:
            raise ValueError(f"d_conv must be an odd kernel size >= 1, got {d_conv!r}")
        check_int("d_model", d_model, 1)
        check_real("expand", expand, 0, low_open=True)
        if int(expand * d_model) < 1:
            raise ValueError(f"expand={expand!r} gives the {d_model}-channel layer no inner "
                             "channel; use a larger expand")
        if dt_rank is not None:
            check_int("dt_rank", dt_rank, 1)
        check_real("dt_min", dt_min, 0, low_open=True)
        check_real("dt_max", dt_max, dt_min, note=" (at least dt_min)")
        check_real("dt_init_floor", dt_init_floor, 0)
        for arg, value, allowed in (("topology", topology, TOPOLOGIES), ("root", root, ROOTS),
                                    ("tree_cost", tree_cost, TREE_COSTS)):
            if value not in allowed:
                raise ValueError(f"{arg}={value!r} is not supported; use one of {allowed}")
        self.d_model = d_model
        self.d_inner = d_inner = int(expand * d_model)
        self.d_state = d_state
        self.dt_rank = dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        self.tree_cost = tree_cost
        self.topology = topology
        self.root = root
        self.scan_impl = scan_impl
        self.tree_impl = tree_impl

        # Registration order fixes the state-dict order of the released checkpoints:
        # the layer's own parameters first, then out_norm, h_norm, in_proj, conv2d, out_proj.
        self.x_proj_weight = nn.Parameter(torch.empty(1, dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(1, d_inner, dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(1, d_inner))
        self.A_logs = nn.Parameter(torch.empty(d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.h_norm = nn.LayerNorm(d_inner)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2,
                                groups=d_inner, bias=False)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        for param in (self.A_logs, self.Ds):
            param._no_weight_decay = True  # read by trainers that honour the Mamba convention
        self.reset_ssm_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1,
                             dt_init_floor: float = 1e-4) -> None:
        """Initialise x_proj, Δ projection, A and D (docs/design.md, "The TreeSSM layer").

        ``in_proj``/``out_proj``/norms keep their module defaults here; the backbone
        re-initialises linear layers (truncated normal) and norms.
        """
        nn.init.uniform_(self.x_proj_weight, -self.d_inner ** -0.5, self.d_inner ** -0.5)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = log_dt.exp().clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_((dt + torch.log(-torch.expm1(-dt))).unsqueeze(0))  # softplus⁻¹
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32))
                          .expand(self.d_inner, -1))
        self.Ds.fill_(1.0)

    @property
    def scan_mode(self) -> str:
        """The ``tree_scan`` mode: "full" for ``root="all"``, else "subtree"."""
        return "full" if self.root == "all" else "subtree"

    def root_vertex(self, num_vertices: int) -> int:
        """The vertex the trees are rooted at: H*W - 1 for ``root="last"``, else 0."""
        return num_vertices - 1 if self.root == "last" else 0

    def build_trees(self, guide: Tensor) -> Trees:
        """The tree(s) this layer scans over for guide features (B, D, H, W); no gradient."""
        batch, _, height, width = guide.shape
        root = self.root_vertex(height * width)
        if self.topology == "tree":
            return grid_tree(guide, cost=self.tree_cost, impl=self.tree_impl, root=root)
        if self.topology == "random":
            return random_grid_tree(batch, height, width, root=root, device=guide.device,
                                    impl=self.tree_impl)
        row = grid_chain(height, width, batch, major="row", root=root, device=guide.device)
        if self.topology == "raster":
            return row
        return row, grid_chain(height, width, batch, major="column", root=root,
                               device=guide.device)

    def scan(self, u: Tensor, decay: Tensor, trees: Trees, overwrite_inputs: bool = False
             ) -> Tensor:
        """Propagate u (B, L, D) with ``decay`` over ``trees`` in this layer's scan mode.

        For ``topology="cross"`` (two chains) the two scans are summed. ``overwrite_inputs``
        lets the last scan work in u's and decay's memory (see ``tree_scan``); the earlier
        one must not, as the last still reads them.
        """
        trees = self._check_trees(trees)
        h = None
        for i, tree in enumerate(trees):
            in_place = overwrite_inputs and i == len(trees) - 1
            y = tree_scan(u, decay, tree, mode=self.scan_mode, impl=self.scan_impl,
                          overwrite_inputs=in_place)
            if h is None:
                h = y
            else:  # y is a dead temporary when the scan was allowed to work in place
                h = y.add_(h) if in_place and not y.requires_grad else h + y
        return h

    def _check_trees(self, trees: Trees) -> tuple[Tree, ...]:
        if self.topology == "cross":
            if not (isinstance(trees, tuple) and len(trees) == 2
                    and all(isinstance(t, Tree) for t in trees)):
                raise TypeError(
                    "topology='cross' scans two chains: tree must be the tuple (row-major chain, "
                    f"column-major chain) that the layer returned, got {type(trees).__name__}")
            return trees
        if not isinstance(trees, Tree):
            raise TypeError(f"topology={self.topology!r} scans one tree: tree must be a "
                            f"grootvl.ops.Tree (as the layer returned), got {type(trees).__name__}")
        return (trees,)

    def forward(self, x: Tensor, tree: Trees | None = None) -> tuple[Tensor, Trees]:
        """(B, H, W, C) -> ((B, H, W, C), the tree(s) the state propagated over)."""
        if x.dim() != 4 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"TreeSSM expects channels-last input (B, H, W, {self.d_model}), got shape "
                f"{tuple(x.shape)}"
            )
        if tree is not None:
            self._check_trees(tree)
        # Two projections instead of one + chunk: each half comes out contiguous, so the
        # convolution input below is an exact channels-last tensor (no hidden copy). The
        # weight is split, not sliced twice: backward then writes both halves of its
        # gradient into one tensor instead of adding two zero-padded full-size ones.
        weight_x, weight_z = self.in_proj.weight.split(self.d_inner)
        x_in = linear(x, weight_x)
        # the gate (its silu is applied in ssm_output); the fused CPU inference path projects
        # it after the scan instead, into the memory of a scan temporary that is dead by then
        z = None if self._late_gate(x) else linear(x, weight_z)
        # (also under torch.compile: the op is one opaque node there, and compiled training
        # keeps its four (B, L, D) tensors per layer instead of what Inductor would save)
        if torch.is_grad_enabled() and self.lean_backward:
            return self._lean_forward(x_in, z, tree)
        # conv kept channels-last; x_in is dead now and may hold u
        conv = self.conv2d(x_in.permute(0, 3, 1, 2))
        y, tree = self._scan_path(conv.permute(0, 2, 3, 1), z, tree, spare=x_in, x=x)
        return linear_of(self.out_proj, y), tree

    def _lean_forward(self, x_in: Tensor, z: Tensor, tree: Trees | None
                      ) -> tuple[Tensor, Trees]:
        """With autograd: everything after the convolution is one ``selective_tree_scan``,
        which keeps four (B, L, D) tensors for backward instead of about fifteen."""
        batch, height, width, d_inner = x_in.shape
        conv = self.conv2d(x_in.permute(0, 3, 1, 2))  # channels-last memory: the views are free
        if tree is None:
            with torch.no_grad():  # only the MST reads the guide's values
                compute = torch.float64 if conv.dtype == torch.float64 else torch.float32
                guide = F.silu(conv).to(compute) if self.topology == "tree" else conv
                tree = self.build_trees(guide)
        out = selective_tree_scan(
            conv.permute(0, 2, 3, 1).reshape(batch, height * width, d_inner),
            z.reshape(batch, height * width, d_inner), self.x_proj_weight[0],
            self.dt_projs_weight[0], self.dt_projs_bias[0], self.A_logs[:, 0], self.Ds,
            (self.h_norm.weight, self.h_norm.bias, self.h_norm.eps),
            (self.out_norm.weight, self.out_norm.bias, self.out_norm.eps), self.out_proj.weight,
            self._check_trees(tree), mode=self.scan_mode, scan_impl=self.scan_impl)
        return out.view(batch, height, width, self.d_model), tree

    @staticmethod
    def _fused(x: Tensor) -> bool:
        """Inference on the CPU runs the element-wise stages as fused numba kernels; not while
        tracing (grootvl.flops counts the norms of the traced graph) or compiling."""
        return (not torch.is_grad_enabled() and x.device.type == "cpu"
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling())

    def _late_gate(self, x: Tensor) -> bool:
        """Whether z is projected after the scan, into the memory of u or decay (dead by
        then): one (B, H, W, D) allocation fewer on the fused path, same numbers."""
        return (self._fused(x) and x.dtype in (torch.float32, torch.float64)
                and not torch.is_autocast_enabled("cpu"))

    def _scan_path(self, conv: Tensor, z: Tensor | None, tree: Trees | None, spare: Tensor,
                   x: Tensor | None = None) -> tuple[Tensor, Trees]:
        """SiLU of the convolution output ``conv``, then the selective scan over the tree(s),
        in float32, gated by z: (B, H, W, D) -> same.

        ``spare``: a dead (B, H, W, D) temporary that the CPU inference path writes u into.
        ``z`` None (only when ``_late_gate(x)`` holds): project it from the layer input x.
        """
        batch, height, width, d_inner = conv.shape
        compute = torch.float64 if conv.dtype == torch.float64 else torch.float32
        fused = self._fused(conv)
        impl = "numba" if fused else "torch"
        # Without autograd, intermediates are overwritten in place: each (B, L, D) float32
        # temporary is a fresh allocation (and page faults) otherwise, which costs about
        # as much as the element-wise op itself on CPU.
        in_place = not torch.is_grad_enabled()
        with autocast_off(conv.device):
            a = -torch.exp(self.A_logs.to(compute)).view(d_inner)  # N = 1
            dt_weight = self.dt_projs_weight[0].to(compute)
            dt_bias = self.dt_projs_bias[0].to(compute)
            x_proj = self.x_proj_weight[0].to(compute)
            reuse = fused and spare.dtype == compute and spare.is_contiguous()
            u_out = spare.view(batch, height * width, d_inner) if reuse else None
            if fused and conv.dtype == compute and conv.is_contiguous():
                # silu (in place), x_proj and the discretisation in one pass per row
                conv = conv.reshape(batch, height * width, d_inner)
                xs, x_dbl, u, decay = silu_project_discretize(
                    conv, x_proj, dt_weight, dt_bias, a, impl="numba", x_out=conv, u_out=u_out)
            else:
                # (B, L, D); a view when the convolution kept channels-last memory format
                xs = F.silu(conv, inplace=in_place).to(compute)
                xs = xs.reshape(batch, height * width, d_inner)
                x_dbl = F.linear(xs, x_proj)  # (B, L, R + 2N)
                u, decay = discretize(x_dbl[..., :self.dt_rank], dt_weight, dt_bias, xs,
                                      x_dbl[..., self.dt_rank:-1], a, impl=impl, u_out=u_out)
            c_out = x_dbl[..., -1:]
            if tree is None:
                tree = self.build_trees(xs.view(batch, height, width, d_inner).permute(0, 3, 1, 2))
            # u and decay are this layer's temporaries: the scan may work in their memory
            h = self.scan(u, decay, tree, overwrite_inputs=fused)
            if z is None:  # into whichever of u and decay h does not occupy
                free = decay if h.data_ptr() == u.data_ptr() else u
                z = torch.mm(x.reshape(-1, self.d_model), self.in_proj.weight[d_inner:].t(),
                             out=free.view(-1, d_inner))
            # y = out_norm(h_norm(h) * C + D * x) * silu(z). (The original computes C·h as a
            # per-position (D x 1)(1 x 1) matmul; grootvl.flops counts it that way.)
            norms = [(n.weight.to(compute), n.bias.to(compute), n.eps)
                     for n in (self.h_norm, self.out_norm)]
            y = ssm_output(h, c_out, xs, z.to(compute).reshape(h.shape), self.Ds.to(compute),
                           *norms, impl=impl, out=h if fused else None)
        # z's dtype: under autocast or for a bfloat16 model, out_proj takes it
        return y.to(z.dtype).view(batch, height, width, d_inner), tree

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"dt_rank={self.dt_rank}, topology={self.topology!r}, root={self.root!r}, "
                f"tree_cost={self.tree_cost!r}, scan_impl={self.scan_impl!r}")
