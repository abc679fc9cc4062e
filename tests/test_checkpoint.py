"""grootvl.load_checkpoint and timm file loading of release-format checkpoints."""
import argparse
import sys
import types

import pytest
import timm
import torch

import grootvl
from grootvl.models.weights import read_state_dict
from grootvl.models import GrootV

SMALL = dict(channels=16, depths=(1, 1, 2, 1))


class CfgNode(dict):
    """Stands in for the yacs config the original training script pickles into checkpoints."""


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A fake original release: dict with model/model_ema/optimizer/... and a pickled config
    whose class is not importable when loading."""
    torch.manual_seed(0)
    model = GrootV(**SMALL, num_classes=10).eval()
    ema = GrootV(**SMALL, num_classes=10).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    fake_yacs = types.ModuleType("fake_yacs_config")
    CfgNode.__module__ = "fake_yacs_config"
    fake_yacs.CfgNode = CfgNode
    sys.modules["fake_yacs_config"] = fake_yacs
    config = CfgNode(MODEL=CfgNode(TYPE="grootv"), TRAIN=CfgNode(EPOCHS=300))
    ckpt = {"model": model.state_dict(), "model_ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "lr_scheduler": {"last_epoch": 5}, "epoch": 5, "max_accuracy": 12.5, "config": config,
            "args": argparse.Namespace(lr=1e-3)}
    path = tmp_path_factory.mktemp("ckpt") / "grootv_release.pth"
    torch.save(ckpt, path)
    del sys.modules["fake_yacs_config"]  # loading must not need the config's class
    return path, model, ema


def _logits(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, 32, 32))


def test_release_checkpoint_loads_with_identical_logits(release):
    path, model, ema = release
    fresh = GrootV(**SMALL, num_classes=10)
    result = grootvl.load_checkpoint(fresh, path)
    assert result.source == "model" and not result.missing_keys and not result.unexpected_keys
    assert torch.equal(_logits(fresh), _logits(model))
    grootvl.load_checkpoint(fresh, path, use_ema=True)
    assert torch.equal(_logits(fresh), _logits(ema))


def test_timm_pretrained_file_overlay_loads_the_release_format(release):
    path, model, _ = release
    created = timm.create_model("grootv_tiny", pretrained=True, num_classes=10, **SMALL,
                                pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(_logits(created), _logits(model))
    # another number of classes: the classifier is re-initialised, the rest is loaded
    other = timm.create_model("grootv_tiny", pretrained=True, num_classes=3, **SMALL,
                              pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(other.conv_head[0].weight, model.conv_head[0].weight, rtol=0, atol=0)
    assert other.head.out_features == 3
    feats = timm.create_model("grootv_tiny", pretrained=True, features_only=True, **SMALL,
                              pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(feats.model.levels[0].blocks[0].TreeSSM.A_logs,
                               model.levels[0].blocks[0].TreeSSM.A_logs, rtol=0, atol=0)


def test_plain_state_dicts_safetensors_and_prefixes(release, tmp_path):
    from safetensors.torch import save_file

    _, model, _ = release
    state = model.state_dict()
    fresh = GrootV(**SMALL, num_classes=10)
    grootvl.load_checkpoint(fresh, {"module." + k: v for k, v in state.items()})
    assert torch.equal(_logits(fresh), _logits(model))
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    fresh = GrootV(**SMALL, num_classes=10)
    assert grootvl.load_checkpoint(fresh, path).source == ""
    assert torch.equal(_logits(fresh), _logits(model))
    plain = tmp_path / "plain.pth"
    torch.save(state, plain)
    assert set(read_state_dict(plain)[0]) == set(state)


def test_classifier_of_another_size_needs_reset_classifier(release):
    path, model, _ = release
    fresh = GrootV(**SMALL, num_classes=4)
    with pytest.raises(RuntimeError, match="reset_classifier=True"):
        grootvl.load_checkpoint(fresh, path)
    head = fresh.head.weight.clone()
    result = grootvl.load_checkpoint(fresh, path, reset_classifier=True)
    assert result.missing_keys == [] and torch.equal(fresh.head.weight, head)
    torch.testing.assert_close(fresh.patch_embed.conv1.weight, model.patch_embed.conv1.weight, rtol=0, atol=0)


def test_another_architecture_is_named(release):
    path, _, _ = release
    bigger = GrootV(channels=16, depths=(1, 1, 3, 1), num_classes=10)
    with pytest.raises(RuntimeError) as err:
        grootvl.load_checkpoint(bigger, path)
    text = str(err.value)
    assert "missing from the checkpoint (20)" in text and "levels.2.blocks.2.TreeSSM" in text
    assert "depths=(1, 1, 2, 1)" in text and "depths=(1, 1, 3, 1)" in text
    wider = GrootV(channels=24, depths=(1, 1, 2, 1), num_classes=10)
    with pytest.raises(RuntimeError, match=r"shape mismatches .*patch_embed.conv1.weight: checkpoint \(8, 3, 3, 3\)"):
        grootvl.load_checkpoint(wider, path)
    with pytest.warns(UserWarning, match="missing from the checkpoint"):
        result = grootvl.load_checkpoint(bigger, path, strict=False)
    assert len(result.missing_keys) == 20


def test_not_a_checkpoint_and_missing_ema_are_explained():
    model = GrootV(**SMALL, num_classes=10)
    with pytest.raises(ValueError, match="no EMA weights"):
        grootvl.load_checkpoint(model, {"model": model.state_dict()}, use_ema=True)
    with pytest.raises(ValueError, match="holds no state dict"):
        grootvl.load_checkpoint(model, {"epoch": 3, "optimizer": {}})
    with pytest.raises(RuntimeError, match="not a GrootV checkpoint"):
        grootvl.load_checkpoint(model, {"fc.weight": torch.zeros(2, 2)})


def test_timm_state_dict_overlay_and_other_in_chans(release):
    path, model, _ = release
    release_dict = {"model": model.state_dict(), "model_ema": model.state_dict(), "epoch": 1}
    created = timm.create_model("grootv_tiny", pretrained=True, num_classes=10, **SMALL,
                                pretrained_cfg_overlay=dict(state_dict=release_dict, num_classes=10))
    assert torch.equal(_logits(created), _logits(model))
    gray = timm.create_model("grootv_tiny", pretrained=True, num_classes=10, in_chans=1, **SMALL,
                             pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(gray.patch_embed.conv1.weight[:, 0],
                               model.patch_embed.conv1.weight.sum(1))
