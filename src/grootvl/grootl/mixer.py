"""The GrootL mixer: Mamba's selective SSM with chain scan + tree_scale * subtree tree scan.

See docs/design.md, "GrootL". Every (channel, state) pair of the SSM is one scan channel: the
input is x = Δ·B·u of shape (B, L, D*N) and the decay is Ā = exp(Δ·A) of the same shape,
shifted by one token (the decay of the edge whose child end is token t is Ā[t+1]). Both scans go through
``grootvl.ops.tree_scan`` in subtree mode; the chain scan uses the chain rooted at the last
token, on which the subtree scan is exactly Mamba's recurrence h_t = Ā_t h_{t-1} + x_t. No
Python loop over tokens runs here (transformers' CPU path loops over tokens in Python).

Generation: beyond the context the text tree is the chain, so both scans obey the same
recurrence there and their sum H = h_chain + s * h_tree obeys H_t = Ā_t H_{t-1} + (1 + s) x_t.
The cache carries H, and every later token is one step of that recurrence.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.models.mamba.modeling_mamba import (
    MambaMixer,
    apply_mask_to_padding_states,
    causal_conv1d_fn,
    causal_conv1d_update,
)

from ..ops import Tree, text_tree, tree_scan
from ..ops.text_tree import context_lengths

try:  # fire accelerate offload hooks of children whose weights we use directly, as transformers does
    from transformers.integrations.accelerate import force_accelerate_hooks
except ImportError:  # pragma: no cover - older/newer transformers without it
    def force_accelerate_hooks(_names):
        return lambda fn: fn


@dataclass
class GrootLState:
    """Settings shared by all mixers of one model, and the context of the current forward.

    ``context_length`` is set by the causal-LM forward before the backbone runs: None (the
    whole sequence is continuation, i.e. the chain), an int, or a (B,) LongTensor.
    """

    tree_scale: float = 0.3
    context_length: int | Tensor | None = None
    scan_impl: str | None = None
    tree_impl: str | None = None
    chain_trees: dict = field(default_factory=dict, repr=False)
    _checked: tuple | None = field(default=None, repr=False)

    def context_lengths(self, batch: int, num_tokens: int, device: torch.device
                        ) -> tuple[Tensor | None, bool]:
        """(the validated (B,) context lengths or None, whether any row has a context tree).

        Checked once per forward (``text_tree.context_lengths``: a clear error for a value
        out of [0, L], a non-integer or a per-row list of another length than the batch,
        whatever ``tree_scale`` is); every layer reuses the result.
        """
        if self.context_length is None:
            return None, False
        key = (batch, num_tokens, str(device))
        if self._checked is None or self._checked[0] != key or self._checked[1] is not self.context_length:
            lengths = context_lengths(self.context_length, batch, num_tokens, device)
            # a context of 0..2 tokens is a chain: no skip edges
            has_tree = bool(lengths.numel()) and int(lengths.max()) > 2
            self._checked = (key, self.context_length, lengths, has_tree)
        return self._checked[2], self._checked[3]


def chain_tree(batch: int, num_tokens: int, device: torch.device) -> Tree:
    """The chain 0 - 1 - ... - L-1 rooted at L-1: parent(t) = t+1, one vertex per level."""
    order = torch.arange(num_tokens - 1, -1, -1, device=device).expand(batch, num_tokens)
    parent = torch.arange(1, num_tokens + 1, device=device)
    parent[-1] = -1
    level_offsets = torch.arange(num_tokens + 1, device=device).expand(batch, num_tokens + 1)
    return Tree(order.contiguous(), parent.expand(batch, num_tokens).contiguous(), level_offsets.contiguous())


def child_decay(delta: Tensor, A: Tensor) -> Tensor:
    """Ā = exp(Δ·A) shifted by one token, (B, L, D, N): the decay of the edge whose child end
    is token t is Ā[t+1]; the root (the last token) has none (1).

    Without autograd it is written straight into one buffer (torch.cat would need Ā as a
    second tensor of this size).
    """
    shape = (*delta.shape, A.shape[-1])
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        decay = torch.exp(delta[:, 1:].unsqueeze(-1) * A)
        return torch.cat([decay, decay.new_ones((shape[0], 1, *shape[2:]))], dim=1)
    out = delta.new_empty(shape)
    torch.mul(delta[:, 1:].unsqueeze(-1), A, out=out[:, :-1]).exp_()
    out[:, -1] = 1.0
    return out


class GrootLMambaMixer(MambaMixer):
    """``MambaMixer`` whose SSM is chain scan + tree_scale * tree scan (installed by class swap)."""

    _grootl: GrootLState

    def _chain(self, batch: int, num_tokens: int, device: torch.device) -> Tree:
        key = (batch, num_tokens, str(device))
        trees = self._grootl.chain_trees
        if key not in trees:
            if len(trees) > 64:
                trees.clear()
            trees[key] = chain_tree(batch, num_tokens, device)
        return trees[key]

    @force_accelerate_hooks(["conv1d", "dt_proj"])
    def forward(self, hidden_states: Tensor, cache=None, attention_mask: Tensor | None = None, **kwargs) -> Tensor:
        if cache is None and "cache_params" in kwargs:
            cache = kwargs.pop("cache_params")
        batch, seq_len, _ = hidden_states.shape
        dtype = hidden_states.dtype
        conv_state = cache.get_conv_state(self.layer_idx) if cache is not None else None
        ssm_state = cache.get_recurrent_state(self.layer_idx) if cache is not None else None
        recording = cache is not None and cache.is_recording_past(self.layer_idx)

        hidden_states = apply_mask_to_padding_states(hidden_states, attention_mask)
        u, gate = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # (B, D, L) each

        if conv_state is not None and seq_len == 1 and not recording:
            u = causal_conv1d_update(u, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                     activation=self.activation)
        else:
            if cache is not None:  # prepends the cached inputs when continuing
                u = cache.update_conv_state(u, self.layer_idx, conv_kernel_size=self.conv_kernel_size)
            u = causal_conv1d_fn(u, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation=self.activation)
            u = u[:, :, -seq_len:]
        u = apply_mask_to_padding_states(u.transpose(1, 2), attention_mask)  # (B, L, D)

        step, B, C = torch.split(self.x_proj(u), [self.time_step_rank, self.ssm_state_size, self.ssm_state_size],
                                 dim=-1)
        delta = F.softplus(self.dt_proj(step).float())  # (B, L, D)
        A = -torch.exp(self.A_log.float())  # (D, N)
        x = (delta * u.float()).unsqueeze(-1) * B.float().unsqueeze(2)  # Δ·B·u, (B, L, D, N)

        scale = float(self._grootl.tree_scale)
        if ssm_state is not None:  # continuing after a prompt: every new token is continuation
            decay = torch.exp(delta.unsqueeze(-1) * A)  # Ā, (B, L, D, N)
            states = self._continue(x, decay, ssm_state.float(), scale)
        else:
            states = self._scan(x, child_decay(delta, A), scale, attention_mask)
        if cache is not None:  # kept in float32: H accumulates over the whole sequence
            cache.update_recurrent_state(states[:, -1], self.layer_idx)

        y = torch.einsum("bldn,bln->bld", states, C.float()) + u.float() * self.D.float()
        y = y * F.silu(gate.transpose(1, 2).float())
        return self.out_proj(y.to(dtype))

    def _scan(self, x: Tensor, child_decay: Tensor, scale: float, attention_mask: Tensor | None
              ) -> Tensor:
        """States (B, L, D, N) of a fresh sequence: h_chain + scale * h_tree.

        x and child_decay (see ``child_decay``) are this forward's temporaries: without
        autograd the last scan works in their memory and the sum is formed in place, which
        spares three (B, L, D, N) allocations (67 MB each at batch 4, 512 tokens, 512 x 16
        channels) and gives the same numbers.
        """
        batch, num_tokens, channels, states = x.shape
        x_flat = x.reshape(batch, num_tokens, channels * states)
        child_decay = child_decay.reshape(batch, num_tokens, channels * states)
        impl = self._grootl.scan_impl
        chain = tree_scan(x_flat, child_decay, self._chain(batch, num_tokens, x.device), mode="subtree", impl=impl)
        lengths, has_tree = self._grootl.context_lengths(batch, num_tokens, x.device)
        if scale == 0.0:
            out = chain
        elif not has_tree:  # no context: the text tree is the chain itself
            out = chain * (1.0 + scale) if chain.requires_grad else chain.mul_(1.0 + scale)
        else:
            tree = text_tree(x_flat, lengths, attention_mask=attention_mask, impl=self._grootl.tree_impl)
            h_tree = tree_scan(x_flat, child_decay, tree, mode="subtree", impl=impl,
                               overwrite_inputs=True)  # honoured only without autograd
            # scale * h_tree + chain rounds exactly as chain + scale * h_tree
            out = chain + scale * h_tree if h_tree.requires_grad else h_tree.mul_(scale).add_(chain)
        return out.view(batch, num_tokens, channels, states)

    def _continue(self, x: Tensor, decay: Tensor, initial: Tensor, scale: float) -> Tensor:
        """States after ``initial`` (B, D, N) for tokens that all lie beyond the context."""
        weighted = x * (1.0 + scale)
        if x.shape[1] == 1:  # one generated token: a single recurrence step
            return decay * initial.unsqueeze(1) + weighted
        batch, num_tokens, channels, states = x.shape
        weighted = torch.cat([weighted[:, :1] + decay[:, :1] * initial.unsqueeze(1), weighted[:, 1:]], dim=1)
        child_decay = torch.cat([decay[:, 1:], torch.ones_like(decay[:, :1])], dim=1)
        out = tree_scan(weighted.reshape(batch, num_tokens, -1), child_decay.reshape(batch, num_tokens, -1),
                        self._chain(batch, num_tokens, x.device), mode="subtree", impl=self._grootl.scan_impl)
        return out.view(batch, num_tokens, channels, states)
