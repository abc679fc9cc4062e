"""GrootV through the ecosystem's model entry points: timm's model API and default cfgs,
features_only, forward_intermediates, and torch.fx feature extraction (torchvision's and
timm's), on tiny models. (What timm's own tests/test_models.py checks for every model; that
file is not shipped in timm's wheel, so these tests check the same contracts here.)"""
from __future__ import annotations

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import grootvl  # noqa: F401  registers grootv_*
from grootvl.layers import TreeSSM

TINY = dict(channels=8, depths=(1, 1, 2, 1))
TRACER_KWARGS = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())


def tiny(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("grootv_tiny", **{**TINY, **kwargs})


def test_tree_ssm_is_registered_as_fx_leaf():
    assert TreeSSM in get_notrace_modules()


def test_graph_node_names_keep_tree_ssm_as_one_node():
    train_nodes, eval_nodes = get_graph_node_names(tiny(), tracer_kwargs=TRACER_KWARGS)
    for nodes in (train_nodes, eval_nodes):
        assert "levels.2.blocks.1.TreeSSM" in nodes
        assert not any(n.startswith("levels.2.blocks.1.TreeSSM.") for n in nodes)  # not traced into
        assert "levels.3.norm.0" in nodes and nodes[-1] == "head"
    assert (train_nodes, eval_nodes) == timm.models.get_graph_node_names(tiny())


def test_torchvision_feature_extractor_matches_forward_intermediates():
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    nodes = {f"levels.{i}.norm.0": f"stage{i}" for i in range(4)}
    extractor = create_feature_extractor(model, return_nodes=nodes, tracer_kwargs=TRACER_KWARGS)
    with torch.inference_mode():
        features = extractor(x)
        intermediates = model.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
    assert list(features) == [f"stage{i}" for i in range(4)]
    for got, want in zip(features.values(), intermediates):
        assert torch.equal(got, want)  # same ops in the same order: bit-identical


def test_fx_graph_module_forward_equals_eager_and_trains():
    """timm's test_model_forward_fx / test_model_backward_fx contract."""
    model = tiny(num_classes=7).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        want = model(x)
        extractor = timm.models.create_feature_extractor(model, return_nodes=["head"])
        got = extractor(x)["head"]
    assert torch.equal(got, want)

    model = tiny(num_classes=7).train()
    graph = create_feature_extractor(model, return_nodes=["head"], tracer_kwargs=TRACER_KWARGS)
    out = graph(torch.randn(2, 3, 64, 64))["head"]
    out.mean().backward()
    missing = [n for n, p in graph.named_parameters() if p.grad is None]
    assert out.shape == (2, 7) and not missing


@pytest.mark.parametrize("feature_cls", [None, "getter", "fx", "hook"])
def test_features_only(feature_cls):
    """The default (forward_intermediates) gives NCHW; wrappers that take the stage modules'
    own outputs (fx, hook) give channels-last maps and report output_fmt NHWC."""
    kwargs = dict(features_only=True, out_indices=(1, 2, 3))
    if feature_cls:
        kwargs["feature_cls"] = feature_cls
    model = tiny(**kwargs).eval()
    assert model.feature_info.channels() == [16, 32, 64]
    assert model.feature_info.reduction() == [8, 16, 32]
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        features = model(x)
        want = tiny().eval().forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)
    if feature_cls in ("fx", "hook"):
        assert str(model.output_fmt.value) == "NHWC"
        features = [f.permute(0, 3, 1, 2) for f in features]
    assert [tuple(f.shape) for f in features] == [(2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]
    for got, ref in zip(features, want):
        assert torch.equal(got, ref)


def test_forward_intermediates_contract():
    model = tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        final, intermediates = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [t.shape[1] for t in intermediates] == [8, 16, 32, 64]  # NCHW by default
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(last_two, intermediates[2:]))
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert torch.equal(early[0], intermediates[0])
        nhwc = model.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
        assert torch.equal(nhwc[1], intermediates[1].permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW' or 'NHWC'"):
        model.forward_intermediates(x, output_fmt="NLC")


def test_prune_intermediate_layers():
    model = tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        want = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        assert model.prune_intermediate_layers([0, 1]) == [0, 1]
        got = model.forward_intermediates(x, intermediates_only=True)
    assert len(model.levels) == 2 and model.num_features == 16
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_default_cfg_and_classifier_reset():
    """timm's test_model_default_cfgs contract, at the cfg's own input size."""
    model = tiny().eval()
    cfg = model.pretrained_cfg
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    assert model.num_classes == cfg["num_classes"] == 1000
    x = torch.randn(1, *cfg["input_size"])
    with torch.inference_mode():
        features = model.forward_features(x)
        assert tuple(features.shape[2:]) == cfg["pool_size"] and features.shape[1] == model.num_features
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model(x).shape == pre_logits.shape
        model.reset_classifier(0, "")
        assert tuple(model(x).shape[2:]) == cfg["pool_size"]
        unpooled = tiny(num_classes=0, global_pool="").eval()(x)
    assert unpooled.dim() == 4 and tuple(unpooled.shape[2:]) == cfg["pool_size"]


def test_grad_checkpointing_gives_the_same_output():
    model = tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    want = model(x)
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)
