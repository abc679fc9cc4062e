"""GrootL on a tiny random Mamba (hidden 64, 2 layers, byte vocabulary): forward, tree, generation."""
from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import MambaConfig, MambaForCausalLM  # noqa: E402
from transformers.models.mamba import modeling_mamba  # noqa: E402

from grootvl.grootl import enable_tree_scanning, is_grootl  # noqa: E402
from grootvl.grootl import mixer as grootl_mixer  # noqa: E402
from grootvl.grootl.model import context_length_from_labels  # noqa: E402
from grootvl.grootl.tokenizer import BYTE_VOCAB_SIZE  # noqa: E402
from grootvl.ops import text_tree  # noqa: E402


def tiny_config() -> MambaConfig:
    return MambaConfig(vocab_size=BYTE_VOCAB_SIZE, hidden_size=64, num_hidden_layers=2, state_size=16,
                       bos_token_id=256, eos_token_id=256, pad_token_id=257)


@pytest.fixture(scope="module")
def stock():
    torch.manual_seed(0)
    return MambaForCausalLM(tiny_config()).eval()


@pytest.fixture()
def grootl(stock):
    return enable_tree_scanning(copy.deepcopy(stock), tree_scale=0.3)


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- text tree


def test_text_tree_is_the_chain_beyond_the_context():
    features = torch.randn(2, 12, 5)
    tree = text_tree(features, context_length=6)
    assert (tree.root == 11).all()
    parent = tree.parent
    for t in range(5, 11):  # from the last context token on, the parent of t is t+1
        assert (parent[:, t] == t + 1).all()
    # inside the context every tree edge is a candidate: |t - parent| in {1, 2, 3}, both ends < 6
    for b in range(2):
        for t in range(5):
            p = int(parent[b, t])
            assert 1 <= abs(p - t) <= 3 and (abs(p - t) == 1 or max(p, t) < 6)


def test_text_tree_links_similar_tokens_and_breaks_ties_toward_the_chain():
    features = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1], [1, 0]]).unsqueeze(0)
    tree = text_tree(features, context_length=5)
    # 0 ~ 2 ~ 4 and 1 ~ 3 are identical, so the skip-2 edges win; the cheapest edges joining the
    # two groups all cost 0 (orthogonal) and the first of them, chain edge (0, 1), is taken
    assert tree.parent[0].tolist() == [2, 0, 4, 1, -1]
    same = text_tree(torch.ones(1, 6, 3), context_length=6)  # all costs tie: the chain wins
    assert same.parent[0, :5].tolist() == [1, 2, 3, 4, 5]


def test_text_tree_per_row_context_and_padding():
    features = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1], [1, 0]]).expand(2, 5, 2).contiguous()
    tree = text_tree(features, context_length=torch.tensor([5, 2]))
    assert tree.parent[0, 0] == 2  # row 0 may skip inside its context
    assert tree.parent[1, :4].tolist() == [1, 2, 3, 4]  # row 1's context of 2 tokens: the chain
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    padded = text_tree(features, context_length=5, attention_mask=mask)
    assert padded.parent[0, :2].tolist() == [1, 2]  # padding hangs off the first real token
    assert padded.parent[0, 2] == 4  # the real tokens still link 2 ~ 4


# ---------------------------------------------------------------- forward


def test_tree_scale_zero_equals_stock_transformers(stock):
    model = enable_tree_scanning(copy.deepcopy(stock), tree_scale=0.0)
    ids = tokens(2, 33)
    with torch.no_grad():
        expected = stock(ids).logits
        for context in (None, 20):
            torch.testing.assert_close(model(ids, context_length=context).logits, expected, rtol=0, atol=1e-5)


def test_tree_scale_changes_logits_and_stays_causal_after_the_context(stock, grootl):
    ids, context = tokens(2, 30), 14
    with torch.no_grad():
        base = grootl(ids, context_length=context).logits
        assert (base - stock(ids).logits).abs().max() > 1e-3
        for t in (context, 22, 29):
            changed = ids.clone()
            changed[:, t] = (changed[:, t] + 1 + torch.arange(2)) % 256
            logits = grootl(changed, context_length=context).logits
            torch.testing.assert_close(logits[:, :t], base[:, :t], rtol=0, atol=0)
            assert (logits[:, t:] - base[:, t:]).abs().max() > 1e-4
        # inside the context tokens may see later context tokens (the tree is not causal there)
        changed = ids.clone()
        changed[:, 8] = (changed[:, 8] + 1) % 256
        assert (grootl(changed, context_length=context).logits[:, :8] - base[:, :8]).abs().max() > 0


def test_context_comes_from_labels_and_per_row_lengths(grootl):
    ids = tokens(2, 24)
    labels = ids.clone()
    labels[0, :10] = -100
    labels[1, :13] = -100
    assert context_length_from_labels(labels) == 10
    with torch.no_grad():
        from_labels = grootl(ids, labels=labels)
        explicit = grootl(ids, context_length=10).logits
        torch.testing.assert_close(from_labels.logits, explicit, rtol=0, atol=0)
        assert torch.isfinite(from_labels.loss)
        rows = grootl(ids, context_length=torch.tensor([10, 13])).logits
        torch.testing.assert_close(rows[0], explicit[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(rows[1], grootl(ids[1:], context_length=13).logits[0], rtol=0, atol=1e-5)
        chain = grootl(ids).logits  # no context and no labels: the whole sequence is the chain
        torch.testing.assert_close(chain, grootl(ids, context_length=1).logits, rtol=0, atol=0)


@pytest.mark.parametrize("context, scale", [(30, 0.3), (None, 0.3), (30, 0.0), ([0, 25], 0.5)])
def test_inference_path_gives_the_autograd_path_numbers(grootl, context, scale):
    """Without autograd the mixer writes the shifted decays into one buffer, lets the last scan
    work in its inputs' memory and sums in place: the logits are the autograd path's."""
    grootl.backbone.layers[0].mixer._grootl.tree_scale = scale
    ids = tokens(2, 40)
    with torch.enable_grad():
        reference = grootl(ids, context_length=context, use_cache=False).logits
    assert reference.requires_grad
    with torch.inference_mode():
        fast = grootl(ids, context_length=context, use_cache=False).logits
    torch.testing.assert_close(fast, reference.detach(), rtol=1e-6, atol=1e-6)


def test_scan_uses_the_tree_scan_operator_and_never_transformers_token_loop(grootl, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("transformers' Python-loop selective scan was called")

    monkeypatch.setattr(modeling_mamba, "mamba_selective_scan", forbidden)
    monkeypatch.setattr(modeling_mamba, "mamba_selective_state_update", forbidden)
    calls = []
    real_scan = grootl_mixer.tree_scan

    def counting_scan(x, decay, tree, mode="full", impl=None, overwrite_inputs=False):
        calls.append((x.shape, tree.level_offsets.shape[1] - 1, mode))
        return real_scan(x, decay, tree, mode=mode, impl=impl, overwrite_inputs=overwrite_inputs)

    monkeypatch.setattr(grootl_mixer, "tree_scan", counting_scan)
    ids = tokens(1, 40)
    with torch.no_grad():
        grootl(ids, context_length=30)
    # per layer (2 layers): one chain scan (40 levels, one per token) and one tree scan (fewer levels)
    assert len(calls) == 4 and all(mode == "subtree" for *_, mode in calls)
    assert calls[0][0] == (1, 40, 128 * 16) and calls[0][1] == 40 and calls[1][1] < 40 and calls[3][1] < 40
    calls.clear()
    grootl.generate(ids[:, :20], max_new_tokens=3, do_sample=False)
    assert len(calls) == 4  # the prompt; the 2 further tokens are one recurrence step each


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_generation_matches_full_forward(grootl, batch):
    prompt = tokens(batch, 17, seed=3)
    out = grootl.generate(prompt, max_new_tokens=10, do_sample=False, output_logits=True,
                          return_dict_in_generate=True, pad_token_id=257)
    sequence = out.sequences
    assert sequence.shape == (batch, 27)
    with torch.no_grad():
        full = grootl(sequence, context_length=17).logits
    steps = torch.stack(out.logits, dim=1)  # (B, 10, V): logits that chose tokens 17..26
    torch.testing.assert_close(steps, full[:, 16:26], rtol=0, atol=1e-4)
    assert torch.equal(sequence[:, 17:], full[:, 16:26].argmax(-1))


def test_cache_continues_with_several_tokens_at_once(grootl):
    ids = tokens(2, 20, seed=6)
    with torch.no_grad():
        full = grootl(ids, context_length=12).logits
        prompt = grootl(ids[:, :12], context_length=12, use_cache=True)
        chunk = grootl(ids[:, 12:16], cache=prompt.cache, use_cache=True)  # chain scan from the cached state
        step = grootl(ids[:, 16:17], cache=chunk.cache, use_cache=True)  # one recurrence step
    got = torch.cat([prompt.logits, chunk.logits, step.logits], dim=1)
    torch.testing.assert_close(got, full[:, :17], rtol=0, atol=1e-5)


def test_left_padded_batch_generates_like_each_prompt_alone(grootl):
    long, short = tokens(1, 15, seed=4)[0], tokens(1, 9, seed=5)[0]
    batch = torch.full((2, 15), 257)
    batch[0], batch[1, 6:] = long, short
    mask = (batch != 257).long()
    together = grootl.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=257,
                               output_logits=True, return_dict_in_generate=True)
    for row, prompt in ((0, long), (1, short)):
        alone = grootl.generate(prompt[None], max_new_tokens=6, do_sample=False, pad_token_id=257,
                                output_logits=True, return_dict_in_generate=True)
        torch.testing.assert_close(torch.stack(together.logits)[:, row], torch.stack(alone.logits)[:, 0],
                                   rtol=0, atol=1e-4)


# ---------------------------------------------------------------- persistence


def test_setting_travels_in_the_config(grootl, tmp_path):
    grootl.save_pretrained(tmp_path)
    plain = MambaForCausalLM.from_pretrained(tmp_path)
    assert not is_grootl(plain) and plain.config.grootl == {"tree_scale": 0.3}
    reloaded = enable_tree_scanning(plain)
    assert is_grootl(reloaded) and reloaded._grootl.tree_scale == 0.3
    ids = tokens(1, 20)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, context_length=12).logits, grootl(ids, context_length=12).logits)


def test_bad_arguments_are_rejected(stock):
    with pytest.raises(ValueError, match="tree_scale"):
        enable_tree_scanning(copy.deepcopy(stock), tree_scale=-1.0)
    with pytest.raises(TypeError, match="MambaForCausalLM"):
        enable_tree_scanning(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="batch size"):
        text_tree(torch.randn(2, 5, 3), context_length=[3, 3, 3])


# ------------------------------------------------------------- context_length validation

BAD_CONTEXTS = [  # (value for a batch of 2 rows of 8 tokens, exception, message fragment)
    ([1, 2, 2], ValueError, "3 entries but the batch size is 2"),  # small values: no tree
    ([5, 5, 5], ValueError, "3 entries but the batch size is 2"),
    ([4], ValueError, "1 entries but the batch size is 2"),
    (torch.tensor([4]), ValueError, "1 entries but the batch size is 2"),
    (3.5, TypeError, "got 3.5 (float)"),
    (-5, ValueError, "context_length -5 is out of range: it must lie in [0, 8]"),
    (1000, ValueError, "context_length 1000 is out of range: it must lie in [0, 8]"),
    ([3, 99], ValueError, "context_length 99 is out of range"),
    ([2, None], TypeError, "entry None is a NoneType"),
    ("3", TypeError, "got '3' (str)"),
    (True, TypeError, "got True (bool)"),
    (torch.tensor([2.5, 3.0]), TypeError, "torch.float32 tensor"),
    (torch.tensor([[2, 3]]), TypeError, "shape (1, 2)"),
]


@pytest.mark.parametrize("value, error, fragment", BAD_CONTEXTS,
                         ids=[repr(v) for v, _, _ in BAD_CONTEXTS])
def test_bad_context_length_is_an_error_not_clamped(grootl, value, error, fragment):
    ids = tokens(2, 8)
    for call in (lambda: text_tree(torch.randn(2, 8, 3), context_length=value),
                 lambda: grootl(ids, context_length=value)):
        with pytest.raises(error, match="context_length") as info:
            call()
        assert fragment in str(info.value)
        assert "0, 8" in str(info.value) or "batch size" in str(info.value)
    with pytest.raises(error, match="context_length"):
        grootl.generate(ids, max_new_tokens=1, do_sample=False, context_length=value)


def test_context_length_edges_are_valid(grootl):
    ids = tokens(2, 8)
    with torch.no_grad():
        whole = grootl(ids, context_length=8).logits
        per_row = grootl(ids, context_length=[8, torch.tensor(8).item()]).logits
        tensor_scalar = grootl(ids, context_length=torch.tensor(8)).logits
        none = grootl(ids, context_length=0).logits
    torch.testing.assert_close(per_row, whole, rtol=0, atol=0)
    torch.testing.assert_close(tensor_scalar, whole, rtol=0, atol=0)
    assert torch.isfinite(none).all()
