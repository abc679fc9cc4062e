"""The one training loop drives all three tasks: each trains, writes snapshots, resumes after an
interruption to exactly the weights of an uninterrupted run, and its snapshot evaluates to the
metrics the run recorded. Library entry points only (typed configs, no argparse)."""
from __future__ import annotations

import json

import pytest
import torch

from grootvl.data import make_ade_shapes, make_coco_shapes
from grootvl.engine import loop
from grootvl.engine.progress import read_jsonl
from grootvl.tasks import build_task, load_config, train
from grootvl.tasks import classification, detection, segmentation

from test_cli_train import make_image_folder

COMMON = ["train.device=cpu", "train.amp=none", "train.progress=none", "train.log_every=1",
          "data.num_workers=0", "sched.epochs=2", "train.seed=3"]
BACKBONE = "model.kwargs={depths: [1, 1, 1, 1], channels: 16}"


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    make_image_folder(base / "folder")
    make_coco_shapes(base / "coco", n_images=4, size=64, split="train2017", seed=0, max_shapes=2)
    make_coco_shapes(base / "coco", n_images=2, size=64, split="val2017", seed=1, max_shapes=2)
    make_ade_shapes(base / "ade", n_train=4, n_val=2, size=64, seed=0)
    return base


def _config(task: str, roots):
    if task == "classification":
        return load_config("grootv_tiny", [*COMMON, f"data.path={roots / 'folder'}",
                                           "model.name=test_efficientnet", "data.img_size=32",
                                           "train.batch_size=4", "train.limit_train_steps=2",
                                           "sched.warmup_epochs=1"])
    if task == "detection":
        return load_config("maskrcnn_1x", [*COMMON, f"data.path={roots / 'coco'}", BACKBONE,
                                           "detection.min_size=64", "detection.max_size=64",
                                           "detection.fpn_channels=16", "detection.box_head_dim=32",
                                           "detection.mask_head_channels=16", "optim.base_lr=3e-4",
                                           "sched.warmup_steps=1", "sched.decay_milestones=[1]",
                                           "detection.detector_kwargs={box_batch_size_per_image: 32, "
                                           "rpn_post_nms_top_n_train: 100, rpn_post_nms_top_n_test: 50}"])
    return load_config("upernet_ade", [*COMMON, f"data.path={roots / 'ade'}", BACKBONE,
                                       "segmentation.num_classes=4", "segmentation.crop_size=64",
                                       "segmentation.scale=[64, 64]", "segmentation.decoder_channels=16",
                                       "optim.base_lr=1e-3", "sched.warmup_steps=1"])


class _Preempted(Exception):
    pass


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_train_interrupt_resume_matches_and_evaluates(task, roots, tmp_path, monkeypatch):
    cfg = _config(task, roots)
    assert build_task(cfg).name == task
    straight = tmp_path / "straight"
    summary = train(cfg, straight)
    for name in ("last.pth", "best.pth", "config.yaml", "log.jsonl", "metrics.json", "summary.json"):
        assert (straight / name).is_file(), name
    epochs = [r for r in read_jsonl(straight / "log.jsonl") if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert all(r["train_loss"] > 0 and r["train_losses"] for r in epochs)
    assert summary["primary_metric"] == build_task(cfg).primary_metric
    assert summary[f"best_{summary['primary_metric']}"] is not None

    # the same run, stopped after its first epoch's snapshot, then resumed
    interrupted = tmp_path / "interrupted"
    real_epoch = loop._train_epoch

    def stop_at_second_epoch(parts, loader, epoch, *args):
        if epoch == 1:
            raise _Preempted
        return real_epoch(parts, loader, epoch, *args)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "_train_epoch", stop_at_second_epoch)
        with pytest.raises(_Preempted):
            train(cfg, interrupted)
    assert torch.load(interrupted / "last.pth", weights_only=True)["epoch"] == 0
    train(cfg, interrupted, resume="auto")
    resumed, expected = _weights(interrupted / "last.pth"), _weights(straight / "last.pth")
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(resumed[k], expected[k]) for k in expected), task

    # the snapshot evaluates, through the library, to what the run recorded
    recorded = json.loads((straight / "metrics.json").read_text())
    options = dict(workers=0, device="cpu", amp="none", progress="none")
    if task == "classification":
        result = classification.evaluate_checkpoint(straight / "last.pth", roots / "folder",
                                                    batch_size=4, **options)
        assert result["top1"] == pytest.approx(recorded["top1"])
        assert result["loss"] == pytest.approx(recorded["loss"], rel=1e-5)
    elif task == "detection":
        result = detection.evaluate_checkpoint(straight / "last.pth", roots / "coco", **options)
        assert result["bbox"] == recorded["bbox"] and result["segm"] == recorded["segm"]
    else:
        result = segmentation.evaluate_checkpoint(straight / "last.pth", roots / "ade", **options)
        assert result["mIoU"] == recorded["mIoU"] and result["aAcc"] == recorded["aAcc"]
