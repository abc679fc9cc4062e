"""Dense-prediction data (grootvl.data): synthetic COCO/ADE generators, data sets, metrics
(grootvl.tasks.metrics), bad-input errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from grootvl.data import (IGNORE_INDEX, ADESegmentation, CocoInstances, make_ade_shapes,
                          make_coco_shapes)
from grootvl.errors import DataError
from grootvl.tasks.metrics import SegmentationConfusion, coco_evaluate, detections_to_coco


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    return make_coco_shapes(root, n_images=6, size=(64, 80), split="val2017", seed=1)


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    return make_ade_shapes(root, n_train=4, n_val=2, size=(64, 80), seed=2)


def test_coco_shapes_masks_are_exact_and_disjoint(coco):
    import pycocotools.mask as mask_util

    data = json.load(open(coco["annotations"]))
    assert {c["id"] for c in data["categories"]} == {1, 2, 3}
    kinds = {type(a["segmentation"]).__name__ for a in data["annotations"]}
    assert kinds == {"list", "dict"}, "both polygons and RLE should be exercised"
    ds = CocoInstances(coco["images"], coco["annotations"])
    for image_id in ds.ids:
        anns = ds.coco.imgToAnns[image_id]
        masks = np.stack([ds.coco.annToMask(a) for a in anns])
        assert masks.sum(0).max() == 1, "shapes must not overlap"
        for ann, mask in zip(anns, masks):
            rle = mask_util.encode(np.asfortranarray(mask))
            assert mask_util.area(rle) == ann["area"]
            np.testing.assert_allclose(mask_util.toBbox(rle), ann["bbox"])
        # the painted shapes differ from the background just outside them
        image = np.asarray(Image.open(f"{coco['images']}/{ds.coco.imgs[image_id]['file_name']}"))
        inside = image[masks.any(0)].astype(float).mean(0)
        assert image.shape == (64, 80, 3) and np.isfinite(inside).all()


def test_coco_dataset_targets_and_flip(coco):
    ds = CocoInstances(coco["images"], coco["annotations"], train=True)
    torch.manual_seed(0)
    for _ in range(6):  # both flipped and unflipped draws
        image, target, skipped = ds[0]
        assert skipped == 0
        assert image.shape == (3, 64, 80) and 0 <= image.min() and image.max() <= 1
        masks, boxes = target["masks"], target["boxes"]
        assert masks.shape[1:] == (64, 80) and len(masks) == len(boxes) == len(target["labels"])
        assert set(target["labels"].tolist()) <= {1, 2, 3}
        for mask, box in zip(masks, boxes):  # the box encloses its mask exactly
            ys, xs = torch.nonzero(mask, as_tuple=True)
            expected = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            torch.testing.assert_close(box, expected)


def test_ade_dataset_items(ade):
    train = ADESegmentation(ade["root"], "training", 4, train=True, scale=(160, 64), crop_size=48)
    image, label, skipped = train[0]
    assert skipped == 0
    assert image.shape == (3, 48, 48) and label.shape == (48, 48) and label.dtype == torch.int64
    assert set(label.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
    val = ADESegmentation(ade["root"], "validation", 4, scale=(160, 32))
    image, label, name, _ = val[0]
    assert image.shape == (3, 32, 40) and label.shape == (64, 80) and name.endswith(".jpg")


def test_segmentation_confusion_metrics():
    conf = SegmentationConfusion(3, ignore_index=255)
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    conf.update(pred, target)
    m = conf.metrics()
    # class 0: tp 1, union 3; class 1: tp 2, union 3; class 2: tp 1, union 2
    assert m["mIoU"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3, abs=1e-3)
    assert m["aAcc"] == pytest.approx(100 * 4 / 6, abs=1e-3)
    assert m["num_pixels"] == 6


def test_coco_evaluate_perfect_detections_score_100(coco):
    ds = CocoInstances(coco["images"], coco["annotations"])
    results = []
    for index in range(len(ds)):
        _, target, _ = ds[index]
        n = len(target["boxes"])
        output = {"boxes": target["boxes"], "scores": torch.ones(n),
                  "labels": target["labels"], "masks": target["masks"][:, None].float()}
        results += detections_to_coco(output, target["image_id"], ds.category_ids)
    metrics = coco_evaluate(ds.coco, results, ds.ids, verbose=False)
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)
    assert metrics["segm"]["AP"] == pytest.approx(100.0)
    empty = coco_evaluate(ds.coco, [], ds.ids, verbose=False)
    assert empty["bbox"]["AP"] == 0.0 and empty["num_detections"] == 0


# ------------------------------------------------------------------------------ bad input

def _edited_annotations(coco, tmp_path, edit):
    data = json.load(open(coco["annotations"]))
    edit(data)
    path = tmp_path / "instances_bad.json"
    path.write_text(json.dumps(data))
    return path


def test_missing_annotation_file_names_file_and_argument(coco, tmp_path):
    with pytest.raises(DataError, match=r"nope\.json not found \(--val-ann\)"):
        CocoInstances(coco["images"], tmp_path / "nope.json", ann_argument="--val-ann")


def test_unknown_category_id_is_reported(coco, tmp_path):
    def edit(data):
        data["annotations"][0]["category_id"] = 7

    path = _edited_annotations(coco, tmp_path, edit)
    with pytest.raises(DataError) as info:
        CocoInstances(coco["images"], path)
    message = str(info.value)
    assert "instances_bad.json" in message and "category_id 7" in message
    assert "categories are [1, 2, 3]" in message


def test_wrong_size_rle_mask_is_reported(coco, tmp_path):
    def edit(data):
        ann = next(a for a in data["annotations"] if isinstance(a["segmentation"], dict))
        ann["segmentation"]["size"] = [32, 32]

    path = _edited_annotations(coco, tmp_path, edit)
    with pytest.raises(DataError, match=r"RLE mask is 32x32 .* is 64x80; encode masks"):
        CocoInstances(coco["images"], path)


def test_image_size_disagreeing_with_json_is_reported(coco, tmp_path):
    def edit(data):
        data["images"][0]["height"] = 50

    path = _edited_annotations(coco, tmp_path, edit)
    ds = CocoInstances(coco["images"], path)
    with pytest.raises(DataError, match=r"is 64x80 .* says 50x80; fix"):
        ds[0]


def test_ade_label_map_errors(ade, tmp_path):
    root = tmp_path / "ade"
    shutil.copytree(ade["root"], root)
    labels = sorted((root / "annotations" / "validation").iterdir())
    Image.fromarray(np.ones((10, 10), np.uint8)).save(labels[0])
    Image.fromarray(np.full((64, 80), 9, np.uint8)).save(labels[1])
    ds = ADESegmentation(root, "validation", num_classes=4)
    with pytest.raises(DataError, match=r"is 10x10 .* label maps must have the size"):
        ds[0]
    with pytest.raises(DataError, match=r"contains class 9 but --num-classes is 4"):
        ds[1]
    labels[0].unlink()
    with pytest.raises(DataError, match=r"have no label map"):
        ADESegmentation(root, "validation", num_classes=4)
    with pytest.raises(DataError, match=r"images/training.* not found"):
        ADESegmentation(tmp_path, "training", num_classes=4)


def test_worker_errors_keep_the_one_line_message(ade, tmp_path):
    root = tmp_path / "ade"
    shutil.copytree(ade["root"], root)
    label = sorted((root / "annotations" / "validation").iterdir())[0]
    Image.fromarray(np.ones((10, 10), np.uint8)).save(label)
    loader = torch.utils.data.DataLoader(ADESegmentation(root, "validation", 4), num_workers=1)
    with pytest.raises(DataError) as info:
        next(iter(loader))
    assert str(info.value).startswith(f"label map {label} is 10x10")
    assert "Traceback" not in str(info.value)
