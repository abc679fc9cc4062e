"""GrootV Mask R-CNN / UperNet builders: shapes, checkpoint loading, lr decay, drop path."""
from __future__ import annotations

import pytest
import torch

from timm.optim import create_optimizer_v2

from grootvl.errors import UserError
from grootvl.models import GrootV
from grootvl.models.dense import maskrcnn_grootv, upernet_grootv

# A reduced GrootV (same architecture, fewer/narrower blocks) keeps the CPU tests fast; the
# full GrootV-T is run once, in test_maskrcnn_grootv_tiny_512.
SMALL = {"depths": [1, 2, 1, 1], "channels": 16}


def _capture_pyramid(model, module):
    shapes = []
    module.register_forward_hook(lambda m, i, out: shapes.extend(tuple(f.shape) for f in out))
    return shapes


def test_maskrcnn_grootv_tiny_512():
    model = maskrcnn_grootv("tiny", num_classes=80, min_size=512, max_size=512,
                            box_score_thresh=0.0, box_detections_per_img=10,
                            rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100).eval()
    assert sum(p.numel() for p in model.backbone.body.parameters()) > 25e6  # the real GrootV-T
    shapes = _capture_pyramid(model, model.backbone.body)
    with torch.no_grad():
        detections = model([torch.rand(3, 512, 512)])
    assert shapes == [(1, 80, 128, 128), (1, 160, 64, 64), (1, 320, 32, 32), (1, 640, 16, 16)]
    (det,) = detections
    assert det["boxes"].shape == (10, 4) and det["masks"].shape == (10, 1, 512, 512)
    assert det["labels"].min() >= 1 and det["labels"].max() <= 80
    assert (det["boxes"] >= 0).all() and (det["boxes"] <= 512).all()
    assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_maskrcnn_800x1333_eval_and_train():
    model = maskrcnn_grootv("tiny", num_classes=3, backbone_kwargs=SMALL, fpn_channels=64,
                            box_head_dim=128, mask_head_channels=32, box_score_thresh=0.0,
                            box_detections_per_img=5, rpn_post_nms_top_n_test=100,
                            rpn_post_nms_top_n_train=200, box_batch_size_per_image=64)
    shapes = _capture_pyramid(model, model.backbone.body)
    image = torch.rand(3, 800, 1333)
    with torch.no_grad():
        model.eval()
        (det,) = model([image])
        assert det["boxes"].shape == (5, 4) and det["masks"].shape == (5, 1, 800, 1333)
        # padded to a multiple of 32 (800 x 1344) by torchvision, strides 4..32
        assert [s[2:] for s in shapes] == [(200, 336), (100, 168), (50, 84), (25, 42)]
        model.train()
        masks = torch.zeros(2, 800, 1333, dtype=torch.uint8)
        masks[0, 100:300, 200:500] = 1
        masks[1, 400:700, 800:1200] = 1
        target = {"boxes": torch.tensor([[200., 100., 500., 300.], [800., 400., 1200., 700.]]),
                  "labels": torch.tensor([1, 3]), "masks": masks}
        losses = model([image], [target])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                           "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_upernet_512_logits_and_gradients():
    model = upernet_grootv("tiny", num_classes=150, backbone_kwargs=SMALL, decoder_channels=32)
    model.eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 512, 512))
    assert logits.shape == (1, 150, 512, 512)
    model.train()
    logits = model(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 150, 64, 64)
    logits.logsumexp(1).mean().backward()
    stem = model.encoder.model.model.patch_embed.conv1.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0


def _classifier_checkpoint(tmp_path, **kwargs):
    import timm

    classifier = timm.create_model("grootv_tiny", num_classes=10, **kwargs)
    with torch.no_grad():
        for p in classifier.parameters():
            p.normal_()
    path = tmp_path / "cls.pth"
    torch.save({"model": classifier.state_dict(), "epoch": 3, "max_accuracy": 1.0}, path)
    return classifier, path


def test_pretrained_backbone_is_loaded_and_head_ignored(tmp_path):
    classifier, path = _classifier_checkpoint(tmp_path, **SMALL)
    expected = classifier.state_dict()
    det = maskrcnn_grootv("tiny", num_classes=3, pretrained_backbone=path, backbone_kwargs=SMALL,
                          fpn_channels=32, box_head_dim=32, mask_head_channels=16)
    seg = upernet_grootv("tiny", num_classes=4, pretrained_backbone=path, backbone_kwargs=SMALL,
                         decoder_channels=16)
    for body in (det.backbone.body.body, seg.encoder.model):
        state = body.state_dict()
        assert len(state) > 50
        for key, value in state.items():
            torch.testing.assert_close(value, expected[key.removeprefix("model.")])
    with pytest.raises(UserError, match="does not fit backbone grootv_tiny"):
        maskrcnn_grootv("tiny", num_classes=3, pretrained_backbone=path,
                        backbone_kwargs={"depths": [1, 1, 1, 1], "channels": 32})
    with pytest.raises(UserError, match="no such file"):
        upernet_grootv("tiny", num_classes=4, pretrained_backbone=tmp_path / "missing.pth")


def _groups_by_name(model, layer_decay, weight_decay=0.05):
    """{parameter name: optimizer group} of the optimizer the training engine builds."""
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=weight_decay,
                                    layer_decay=layer_decay)
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {name_of[id(p)]: g for g in optimizer.param_groups for p in g["params"]}


def test_layer_decay_follows_the_original_rule():
    names = ["patch_embed.conv1.weight", "levels.0.blocks.0.mlp.fc1.weight",
             "levels.0.downsample.conv.weight", "levels.0.norm.0.weight",
             "levels.1.blocks.0.norm1.0.weight", "levels.1.blocks.1.TreeSSM.A_logs",
             "levels.1.downsample.norm.1.weight", "levels.2.blocks.0.mlp.fc2.bias",
             "levels.2.norm.0.bias", "levels.3.blocks.0.TreeSSM.Ds", "levels.3.norm.0.weight"]
    groups = _groups_by_name(GrootV(channels=8, depths=(1, 2, 1, 1), num_classes=3), 0.5)
    r = {name: groups[name]["lr_scale"] for name in names}
    # blocks from the last: 3.0 -> 0, 2.0 -> 1, 1.1 -> 2, 1.0 -> 3, 0.0 -> 4
    assert r["levels.3.blocks.0.TreeSSM.Ds"] == 1.0
    assert r["levels.2.blocks.0.mlp.fc2.bias"] == 0.5
    assert r["levels.1.blocks.1.TreeSSM.A_logs"] == 0.25
    assert r["levels.1.blocks.0.norm1.0.weight"] == 0.125
    assert r["levels.0.blocks.0.mlp.fc1.weight"] == r["patch_embed.conv1.weight"] == 0.0625
    # downsample / norm ending stage s share the ratio of stage s+1's first block
    assert r["levels.0.downsample.conv.weight"] == r["levels.0.norm.0.weight"] == 0.125
    assert r["levels.1.downsample.norm.1.weight"] == 0.5
    assert r["levels.2.norm.0.bias"] == 1.0 and r["levels.3.norm.0.weight"] == 1.0


def test_param_groups_cover_every_parameter_once_with_decay_rules():
    model = maskrcnn_grootv("tiny", num_classes=3, backbone_kwargs=SMALL, drop_path_rate=0.3,
                            fpn_channels=32, box_head_dim=32, mask_head_channels=16)
    by_name = _groups_by_name(model, layer_decay=0.9)
    seen = [id(p) for g in {id(g): g for g in by_name.values()}.values() for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    assert len(by_name) == len(seen)
    prefix = model.backbone_prefix
    assert by_name[prefix + "model.levels.3.blocks.0.mlp.fc1.weight"]["lr_scale"] == pytest.approx(1)
    # 5 blocks: the first is 4 blocks from the last
    assert by_name[prefix + "model.patch_embed.conv1.weight"]["lr_scale"] == pytest.approx(0.9**4)
    assert by_name["backbone.fpn.layer_blocks.0.0.weight"]["lr_scale"] == pytest.approx(1)
    for name, group in by_name.items():
        no_decay = name.endswith((".bias", "A_logs", ".Ds")) or "norm" in name
        assert (group["weight_decay"] == 0.0) == no_decay, name
    # drop path rises linearly to the requested rate over the backbone's blocks
    body = model.backbone.body.body.model
    assert body.levels[0].blocks[0].drop_path.__class__.__name__ == "Identity"
    assert body.levels[3].blocks[0].drop_path.drop_prob == pytest.approx(0.3)
