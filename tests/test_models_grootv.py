"""GrootV backbone: released-checkpoint layout, parity with an independent re-implementation of
the original forward pass, input handling, and the timm interface."""
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import timm.optim
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree as scipy_mst

import grootvl  # noqa: F401  (registers the timm models)
from grootvl.models import GrootV
from grootvl.ops import bfs_tree, grid_edges, tree_scan

TINY = dict(channels=16, depths=(1, 2, 2, 1), num_classes=7)
REFERENCE_LAYOUT = Path(__file__).resolve().parent / "data" / "grootv_t_state_dict.tsv"


# ----------------------------------------------------------------- checkpoint layout / sizes

def test_state_dict_equals_the_released_grootv_t_layout():
    # name, shape and dtype of every entry of the released GrootV-T checkpoint's "model"
    rows = [line.rstrip("\n").split("\t") for line in open(REFERENCE_LAYOUT)]
    expected = [(name, shape, dtype) for name, shape, dtype in rows]
    model = timm.create_model("grootv_tiny")
    ours = [(k, str(tuple(v.shape)), str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict().items()]
    assert ours == expected


@pytest.mark.parametrize("name, params", [("grootv_tiny", 29_958_600), ("grootv_small", 51_331_624),
                                          ("grootv_base", 90_597_096)])
def test_parameter_counts_match_the_paper(name, params):
    with torch.device("meta"):
        model = timm.create_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == params
    assert f"{count / 1e6:.2f}" == {"grootv_tiny": "29.96", "grootv_small": "51.33", "grootv_base": "90.60"}[name]


# ----------------------------------------------------- independent re-implementation (oracle)

def _ln(x, sd, key, eps=1e-6):
    return F.layer_norm(x, x.shape[-1:], sd[key + ".weight"], sd[key + ".bias"], eps)


def _mst_tree(xs, height, width):
    """scipy MST of exp(-cosine) grid costs of xs (B, D, L) -> grootvl Tree rooted at 0."""
    edges = grid_edges(height, width)
    g = xs.float()
    costs = torch.exp(-F.cosine_similarity(g[:, :, edges[:, 0]], g[:, :, edges[:, 1]], dim=1))
    rows = []
    for c in costs.numpy().astype(np.float64):
        m = scipy_mst(coo_matrix((c, (edges[:, 0].numpy(), edges[:, 1].numpy())),
                                 shape=(height * width,) * 2)).tocoo()
        rows.append(np.stack([m.row, m.col], 1))
    return bfs_tree(torch.from_numpy(np.stack(rows)).long().reshape(len(rows), -1, 2), height * width)


def _tree_ssm_original(x, sd, p):
    """The original TreeSSM forward, channels-first (B, D, L) as the original computes it."""
    b, h, w, _ = x.shape
    d = sd[p + "conv2d.weight"].shape[0]
    r = sd[p + "dt_projs_weight"].shape[-1]
    xz = x @ sd[p + "in_proj.weight"].T
    xi, z = xz.chunk(2, dim=-1)
    z = F.silu(z)
    xi = F.silu(F.conv2d(xi.permute(0, 3, 1, 2), sd[p + "conv2d.weight"], padding=1, groups=d))
    xs = xi.reshape(b, d, h * w)
    x_dbl = torch.einsum("bdl,cd->bcl", xs, sd[p + "x_proj_weight"][0])
    dts, bs, cs = torch.split(x_dbl, [r, 1, 1], dim=1)
    dts = torch.einsum("brl,dr->bdl", dts, sd[p + "dt_projs_weight"][0])
    delta = F.softplus(dts + sd[p + "dt_projs_bias"][0][:, None])
    a = -torch.exp(sd[p + "A_logs"])  # (D, 1)
    decay = torch.exp(delta * a)
    u = delta * bs * xs
    tree = _mst_tree(xs, h, w)
    hs = tree_scan(u.transpose(1, 2), decay.transpose(1, 2), tree, impl="reference")  # (B, L, D)
    hs = F.layer_norm(hs, (d,), sd[p + "h_norm.weight"], sd[p + "h_norm.bias"], 1e-5)
    y = hs * cs.transpose(1, 2) + (sd[p + "Ds"][:, None] * xs).transpose(1, 2)
    y = F.layer_norm(y, (d,), sd[p + "out_norm.weight"], sd[p + "out_norm.bias"], 1e-5)
    return (y.view(b, h, w, d) * z) @ sd[p + "out_proj.weight"].T


def original_forward(sd, x, depths):
    """Logits of the original GrootV, computed straight from a state dict."""
    x = F.conv2d(x, sd["patch_embed.conv1.weight"], sd["patch_embed.conv1.bias"], stride=2, padding=1)
    x = _ln(x.permute(0, 2, 3, 1), sd, "patch_embed.norm1.1").permute(0, 3, 1, 2)
    x = F.conv2d(F.gelu(x), sd["patch_embed.conv2.weight"], sd["patch_embed.conv2.bias"], stride=2, padding=1)
    x = _ln(x.permute(0, 2, 3, 1), sd, "patch_embed.norm2.1")
    for i, depth in enumerate(depths):
        for j in range(depth):
            p = f"levels.{i}.blocks.{j}."
            x = x + _tree_ssm_original(_ln(x, sd, p + "norm1.0"), sd, p + "TreeSSM.")
            hid = F.gelu(F.linear(_ln(x, sd, p + "norm2.0"), sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
            x = x + F.linear(hid, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = _ln(x, sd, f"levels.{i}.norm.0")
        if i < len(depths) - 1:
            x = F.conv2d(x.permute(0, 3, 1, 2), sd[f"levels.{i}.downsample.conv.weight"], stride=2, padding=1)
            x = _ln(x.permute(0, 2, 3, 1), sd, f"levels.{i}.downsample.norm.1")
    x = F.conv2d(x.permute(0, 3, 1, 2), sd["conv_head.0.weight"])
    x = F.batch_norm(x, sd["conv_head.1.0.running_mean"], sd["conv_head.1.0.running_var"],
                     sd["conv_head.1.0.weight"], sd["conv_head.1.0.bias"], False, 0.0, 1e-5)
    x = F.gelu(x).mean((2, 3))
    return F.linear(x, sd["head.weight"], sd["head.bias"])


def _randomised(model):
    """Perturb norms/BN statistics so the parity check exercises every tensor."""
    torch.manual_seed(11)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith(("norm1.1.weight", "norm.0.weight", "h_norm.weight", "out_norm.weight",
                              "conv_head.1.0.weight")):
                t.uniform_(0.5, 1.5)
            elif name.endswith(("running_mean", ".bias")) and t.is_floating_point():
                t.normal_(0, 0.1)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("A_logs"):
                t.uniform_(-1, 1)
    return model


def test_logits_match_an_independent_reimplementation_of_the_original():
    torch.manual_seed(0)
    model = _randomised(GrootV(**TINY)).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    sd = model.state_dict()
    with torch.no_grad():
        ours = model(x)
        theirs = original_forward(sd, x, TINY["depths"])
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10)


def test_float32_logits_match_the_float64_oracle_closely():
    torch.manual_seed(1)
    model = _randomised(GrootV(**TINY)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = model(x).double()
        sd = {k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        theirs = original_forward(sd, x.double(), TINY["depths"])
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- inputs and modes

def test_any_size_train_mode_autocast_and_channels_last():
    torch.manual_seed(2)
    model = GrootV(**TINY, drop_path_rate=0.3)
    model.train()
    x = torch.randn(2, 3, 33, 47)
    out = model(x)
    out.sum().backward()
    assert out.shape == (2, 7) and model.patch_embed.conv1.weight.grad.abs().sum() > 0
    model.eval()
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        ref = model(x)
        cl = model(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = model(x)
    torch.testing.assert_close(cl, ref, rtol=1e-5, atol=1e-5)
    assert bf.dtype == torch.bfloat16 and torch.isfinite(bf).all()
    assert (bf.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


def _ops_run(model, x) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x)
    return {e.name for e in prof.events()}


def test_inference_overwrites_only_its_own_temporaries():
    """Without autograd a block applies the GELU in fc1's output and adds each residual into
    its branch's output: the logits are bit for bit the plain path's, the input is untouched,
    and a forward hook that keeps a branch's output turns the in-place ops off (so what it
    recorded stays valid)."""
    torch.manual_seed(6)
    model = _randomised(GrootV(**TINY)).eval()
    x = torch.randn(2, 3, 48, 48)
    x_before = x.clone()
    with torch.no_grad():
        fast = model(x)
        assert {"aten::gelu_", "aten::add_"} <= _ops_run(model, x)
        kept = []
        block = model.levels[1].blocks[0]
        handles = [m.register_forward_hook(lambda m, i, o: kept.append((o, o.clone())))
                   for m in (block.mlp, block.mlp.fc1)]
        handles.append(block.TreeSSM.register_forward_hook(
            lambda m, i, o: kept.append((o[0], o[0].clone()))))
        hooked = model(x)
        ops = _ops_run(model, x)
        for h in handles:
            h.remove()
    assert torch.equal(fast, hooked)
    assert torch.equal(x, x_before)
    assert len(kept) >= 3 and all(torch.equal(seen, copy) for seen, copy in kept)
    assert "aten::gelu" in ops  # the hooked block took the plain path
    with torch.enable_grad():
        assert "aten::gelu_" not in _ops_run(model, x)  # never under autograd


@pytest.mark.parametrize("bias", [True, False])
def test_blockwise_inference_mlp_matches_the_plain_mlp(bias):
    """CPU inference runs the MLP over blocks of rows (here 256 rows: five blocks, the last
    partial); the result is the plain fc2(GELU(fc1(x)))."""
    from grootvl.layers import GeluMlp

    torch.manual_seed(8)
    mlp = GeluMlp(24, 96)
    if not bias:
        mlp.fc2.bias = None
    mlp.inference_block_bytes = 1  # the smallest block, 256 rows
    x = torch.randn(2, 24, 24, 24)
    with torch.no_grad():
        assert mlp._blockwise(x)
        fast = mlp(x)
        plain = mlp.fc2(F.gelu(mlp.fc1(x)))
    torch.testing.assert_close(fast, plain, rtol=1e-6, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert not mlp._blockwise(x) and mlp(x).dtype == torch.bfloat16


def test_drop_path_is_linear_over_all_blocks():
    model = GrootV(channels=16, depths=(2, 2, 2, 2), drop_path_rate=0.7)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for lvl in model.levels for b in lvl.blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.7, 8), rtol=1e-6)


def test_drop_path_applied_in_the_residual_sum_matches_timm_drop_path():
    """Training blocks scale the branch inside the sum: the numbers, random draws and
    gradients of x + timm's DropPath(branch)."""
    from grootvl.models import GrootVBlock
    torch.manual_seed(5)
    block = GrootVBlock(16, drop_path=0.5).train()
    x = torch.randn(6, 4, 5, 16, requires_grad=True)
    results = []
    for fused in (True, False):
        torch.manual_seed(50)
        if fused:
            out = block(x)[0]
        else:
            y = x + block.drop_path(block.TreeSSM(block.norm1(x))[0])
            out = y + block.drop_path(block.mlp(block.norm2(y)))
        grads = torch.autograd.grad(out.square().sum(), [x, *block.parameters()])
        results.append([out, *grads])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    block.eval()  # drop path was active: every sample's branches were dropped or rescaled
    assert (results[0][0] != block(x)[0]).flatten(1).any(1).all()


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(3)
    model = GrootV(**TINY)
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(30)  # same drop-path masks in both runs
    model(x).square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(30)
    model(x).square().sum().backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tree_sharing, checkpointing", [("block", False), ("stage", False),
                                                         ("block", True), ("stage", True)])
def test_lean_training_gives_the_gradients_of_the_plain_autograd_path(tree_sharing, checkpointing):
    """TreeSSM and MLP keep less for backward (lean_backward): same loss, same gradients."""
    torch.manual_seed(7)
    model = _randomised(GrootV(**TINY, tree_sharing=tree_sharing, drop_path_rate=0.2)).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    results = []
    for lean in (False, True):
        for m in model.modules():
            if hasattr(m, "lean_backward"):
                m.lean_backward = lean
        model.set_grad_checkpointing(lean and checkpointing)
        model.zero_grad()
        torch.manual_seed(70)  # same drop-path masks
        loss = model(x).square().sum()
        loss.backward()
        results.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
    assert sum(hasattr(m, "lean_backward") for m in model.modules()) == 2 * sum(TINY["depths"])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_lean_training_keeps_little_more_than_half_the_activations_for_backward():
    """Bytes autograd saves (unique storages, parameters excluded), lean vs plain. (0.50 at
    this size; keeping the decays and the up pass instead of the scan output added 0.04.)"""
    torch.manual_seed(8)
    model = GrootV(**TINY).train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    x = torch.randn(2, 3, 64, 64)

    def saved_bytes() -> int:
        seen = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
        return sum(seen.values())

    lean = saved_bytes()
    for m in model.modules():
        if hasattr(m, "lean_backward"):
            m.lean_backward = False
    assert lean < 0.55 * saved_bytes()


def test_stage_tree_sharing_reuses_the_first_block_tree(monkeypatch):
    import grootvl.layers.tree_ssm as module

    built = []
    real = module.grid_tree

    def counting(*args, **kwargs):
        built.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "grid_tree", counting)
    torch.manual_seed(4)
    block = GrootV(**TINY).eval()
    stage = GrootV(**TINY, tree_sharing="stage").eval()
    stage.load_state_dict(block.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out_block = block(x)
        n_block = len(built)
        out_stage = stage(x)
    assert n_block == sum(TINY["depths"]) and len(built) - n_block == len(TINY["depths"])
    assert out_stage.shape == out_block.shape and not torch.allclose(out_stage, out_block)
    with pytest.raises(ValueError, match="tree_sharing"):
        GrootV(**TINY, tree_sharing="layer")


# -------------------------------------------------------------------------------- timm API

def test_timm_conventions():
    model = timm.create_model("grootv_tiny", num_classes=5, channels=16, depths=(1, 1, 1, 1))
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    assert cfg["first_conv"] == "patch_embed.conv1" and cfg["classifier"] == "head"
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features, 2, 2) and model.num_features == int(1.5 * 128)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        torch.testing.assert_close(model.forward_head(feats), model(x))
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
    nwd = model.no_weight_decay()
    assert "levels.0.blocks.0.TreeSSM.A_logs" in nwd and "levels.3.blocks.0.TreeSSM.Ds" in nwd
    assert all(n.endswith((".A_logs", ".Ds")) for n in nwd) and len(nwd) == 8
    groups = timm.optim.param_groups_weight_decay(model, 0.05, no_weight_decay_list=nwd)
    no_decay = {id(p) for p in groups[0]["params"]}
    assert id(model.levels[0].blocks[0].TreeSSM.A_logs) in no_decay


def test_features_only_returns_the_four_stage_outputs_nchw():
    model = timm.create_model("grootv_small", features_only=True, channels=16, depths=(1, 1, 1, 1))
    assert model.feature_info.channels() == [16, 32, 64, 128]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 16, 16, 24), (1, 32, 8, 12), (1, 64, 4, 6), (1, 128, 2, 3)]
    pruned = timm.create_model("grootv_tiny", features_only=True, out_indices=(1, 2),
                               channels=16, depths=(1, 1, 1, 1))
    with torch.no_grad():
        feats = pruned(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [32, 64] and len(pruned.model.levels) == 3


def test_forward_intermediates_match_forward_features():
    torch.manual_seed(5)
    model = GrootV(**TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        nhwc = model.forward_intermediates(x, indices=[0], output_fmt="NHWC", intermediates_only=True)
        torch.testing.assert_close(final, model.forward_features(x))
    torch.testing.assert_close(nhwc[0], inter[0].permute(0, 2, 3, 1))
    assert [f.shape[1] for f in inter] == [16, 32, 64, 128]


def test_pretrained_without_a_file_explains_how_to_pass_one():
    with pytest.raises(RuntimeError, match=r"pretrained_cfg_overlay=dict\(file="):
        timm.create_model("grootv_base", pretrained=True)


def test_registered_variants_have_the_paper_configurations():
    for name, c, depths in [("grootv_tiny", 80, (2, 2, 9, 2)), ("grootv_small", 96, (2, 2, 13, 2)),
                            ("grootv_base", 128, (2, 2, 13, 2))]:
        with torch.device("meta"):
            model = timm.create_model(name)
        assert model.channels == c and model.depths == depths
        rates = [getattr(b.drop_path, "drop_prob", 0.0) for lvl in model.levels for b in lvl.blocks]
        assert math.isclose(rates[-1], {"grootv_tiny": 0.1, "grootv_small": 0.3, "grootv_base": 0.5}[name],
                            rel_tol=1e-6)
