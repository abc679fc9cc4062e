"""The GrootL text tree: a minimum spanning tree over tokens, rooted at the last token.

See docs/design.md, "Building trees" (text). Candidate edges are (t, t+1) for every t and,
inside the context (prompt), also (t, t+2) and (t, t+3). The cost is -cosine similarity of
the per-token features, so similar nearby tokens get linked. Beyond the context only chain edges exist and
each of them is a bridge, so the tree there is the chain itself; with the root at the last
token, the subtree scan over this tree is causal for every token after the context.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .arguments import is_int
from .mst import minimum_spanning_tree
from .tree import Tree, bfs_tree

# Cosine similarity lies in [-1, 1], so real costs lie in [-1, 1]. Candidate edges a row may
# not use (a skip edge beyond that row's own context, when context lengths differ within the
# batch) cost more than any real edge: each closes a cycle with chain edges that are all
# cheaper, so the MST never takes it. Edges touching padding cost more still, so padding only
# hangs off the real tokens (along the chain) and never sits on a path between two of them.
_FORBIDDEN_COST = 2.0
_PADDING_COST = 3.0


def text_edges(num_tokens: int, context_length: int, device: torch.device | str | None = None) -> Tensor:
    """Candidate edges (E, 2) of the text tree.

    Order (it breaks ties between equal costs, lower index first): all chain edges (t, t+1)
    by t, then the skip edges (t, t+2) with t+2 < context_length by t, then (t, t+3) with
    t+3 < context_length by t. So on ties the chain (Mamba's own order) wins, then earlier
    tokens.
    """
    if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}")
    if not is_int(context_length) or not 0 <= context_length <= num_tokens:
        raise ValueError(f"context_length must be an int in [0, {num_tokens}] (num_tokens), "
                         f"got {context_length!r}")
    groups = [torch.stack([torch.arange(num_tokens - 1), torch.arange(1, num_tokens)], dim=1)]
    for skip in (2, 3):
        count = max(context_length - skip, 0)
        start = torch.arange(count)
        groups.append(torch.stack([start, start + skip], dim=1))
    return torch.cat(groups, dim=0).to(device)


def context_lengths(context_length, batch: int, num_tokens: int,
                    device: torch.device | str | None = None) -> Tensor:
    """``context_length`` as a validated (B,) LongTensor: one context length per row.

    Accepts an int (the whole batch), or one int per row (a list/tuple of ints or a 1-D
    integer tensor of exactly ``batch`` entries; a 0-d integer tensor counts as one int).
    Every value must lie in [0, num_tokens]. Anything else is a TypeError/ValueError naming
    ``context_length``, the value, what is allowed and the fix; nothing is clamped. One host
    sync for a tensor (its range check).
    """
    allowed = f"an int in [0, {num_tokens}] (the sequence length) for the whole batch or one per row"
    if isinstance(context_length, Tensor):
        if context_length.dtype == torch.bool or context_length.is_floating_point() \
                or context_length.is_complex() or context_length.dim() > 1:
            raise TypeError(
                f"context_length must be {allowed}; got a {context_length.dtype} tensor of shape "
                f"{tuple(context_length.shape)}: pass a 1-D integer tensor (e.g. .long())")
        per_row = context_length.dim() == 1
        lengths = context_length.to(device=device, dtype=torch.long).reshape(-1)
    elif is_int(context_length):
        per_row = False
        lengths = torch.tensor([int(context_length)], dtype=torch.long, device=device)
    elif isinstance(context_length, Sequence) and not isinstance(context_length, (str, bytes)):
        bad = [v for v in context_length if not is_int(v)]
        if bad:
            raise TypeError(f"context_length must be {allowed}; got {list(context_length)!r}, "
                            f"whose entry {bad[0]!r} is a {type(bad[0]).__name__}, not an int")
        per_row = True
        lengths = torch.tensor([int(v) for v in context_length], dtype=torch.long, device=device)
    else:
        raise TypeError(f"context_length must be {allowed}; got {context_length!r} "
                        f"({type(context_length).__name__}): pass the number of leading prompt "
                        "tokens as an int")
    if per_row and lengths.numel() != batch:
        raise ValueError(
            f"context_length has {lengths.numel()} entries but the batch size is {batch}; pass "
            "one int for the whole batch or exactly one per row")
    if lengths.numel():
        low, high = (int(v) for v in torch.aminmax(lengths))
        if low < 0 or high > num_tokens:
            raise ValueError(
                f"context_length {low if low < 0 else high} is out of range: it must lie in "
                f"[0, {num_tokens}] (0: no context; {num_tokens}: the whole sequence of "
                f"{num_tokens} tokens); pass the number of leading prompt tokens")
    return lengths.expand(batch) if not per_row else lengths


def text_edge_costs(features: Tensor, edges: Tensor) -> Tensor:
    """-cosine similarity (B, E) of the features of both ends of each ``text_edges`` edge.

    Computed in float32 one token offset at a time (adjacent slices, no (B, E, F) gather):
    the features are normalised once and the cost of (t, t+k) is -<f_t, f_t+k>.
    """
    unit = torch.nn.functional.normalize(features.detach().float(), dim=-1, eps=1e-12)
    offsets = edges[:, 1] - edges[:, 0]
    costs = []
    for skip in (1, 2, 3):
        count = int((offsets == skip).sum())
        if count:
            costs.append(-torch.linalg.vecdot(unit[:, :count], unit[:, skip:skip + count]))
    if not costs:
        return unit.new_zeros(unit.shape[0], 0)
    return torch.cat(costs, dim=1)


@torch.no_grad()
def text_tree(
    features: Tensor,
    context_length,
    attention_mask: Tensor | None = None,
    impl: str | None = None,
) -> Tree:
    """Minimum spanning tree over the tokens of each row, rooted at the last token.

    Args:
        features: (B, L, F) per-token features (GrootL: Δ·B·u flattened over (channel,
            state)). Costs are -cosine similarity computed in float32; a zero vector has
            similarity 0 to everything. Ties are broken by candidate-edge index, see
            ``text_edges``: chain edges before skip edges, earlier tokens first.
        context_length: int, or one int per row (list or (B,) LongTensor): the number of
            leading tokens forming the context, inside which skip edges are allowed. Each
            value must lie in [0, L] (see ``context_lengths``); 0 or 1 gives the chain.
        attention_mask: optional (B, L), 0 at padding. Padding tokens are attached along the
            chain, after all real tokens are connected, so they never lie between two real
            tokens (their Δ·B·u is zero, so they then contribute nothing).
        impl: tree construction implementation (``"numba"``, ``"torch"`` or None).

    Returns:
        A ``Tree`` rooted at vertex L-1. No gradient flows through it.
    """
    if not isinstance(features, Tensor) or features.dim() != 3:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be a (B, L, F) tensor (tokens on dim 1), got {shape}")
    if not features.dtype.is_floating_point:
        raise TypeError(f"features must be floating point, got {features.dtype}; use features.float()")
    batch, num_tokens = features.shape[:2]
    device = features.device
    lengths = context_lengths(context_length, batch, num_tokens, device)
    longest = int(lengths.max()) if batch else 0
    edges = text_edges(num_tokens, longest, device=device)
    costs = text_edge_costs(features, edges)
    if batch and int(lengths.min()) != longest:
        allowed = edges[:, 1].unsqueeze(0) < lengths.unsqueeze(1)
        is_chain = (edges[:, 1] - edges[:, 0] == 1).unsqueeze(0)
        costs = torch.where(allowed | is_chain, costs, torch.full_like(costs, _FORBIDDEN_COST))
    if attention_mask is not None:
        if attention_mask.shape != (batch, num_tokens):
            raise ValueError(
                f"attention_mask must have shape (B, L) = {(batch, num_tokens)}, got {tuple(attention_mask.shape)}"
            )
        real = attention_mask.to(device=device).bool()
        touches_padding = ~(real[:, edges[:, 0]] & real[:, edges[:, 1]])
        costs = torch.where(touches_padding, torch.full_like(costs, _PADDING_COST), costs)
    tree_edges = minimum_spanning_tree(edges, costs, num_tokens, impl=impl)
    return bfs_tree(tree_edges, num_tokens, root=num_tokens - 1, impl=impl)
