"""The files users hand us (grootvl.files and its callers): every unreadable or hostile
checkpoint is one error line naming the file and the cause, and nothing in it runs; NaN
weights and oversized models from saved options are refused; decompression bombs and
unreadable images are skipped and counted in every task, 16-bit images are scaled, folder
scans do not follow symlink loops."""
from __future__ import annotations

import os
import pickle
import shutil
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import grootvl
from grootvl.data import (ADESegmentation, CocoInstances, ImageFolderDataset, make_ade_shapes,
                          make_coco_shapes)
from grootvl.engine.task import drop_replaced
from grootvl.errors import DataError, UserError
from grootvl.files import CheckpointError, UnreadableImage, decode_image, read_checkpoint
from grootvl.models import GrootV
from grootvl.models.factory import create_model
from grootvl.models.weights import load_weights
from grootvl.visualize import load_images

SMALL = dict(channels=8, depths=(1, 1, 1, 1), num_classes=2)


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels; its data is a few bytes."""
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    model = GrootV(**SMALL)
    good = root / "good.pth"
    torch.save({"model": model.state_dict(), "arch": "grootv_tiny"}, good)
    data = good.read_bytes()
    from safetensors.torch import save_file

    save_file(model.state_dict(), root / "good.safetensors")
    whole = (root / "good.safetensors").read_bytes()
    made = {
        "empty.pth": b"", "garbage.pth": np.random.default_rng(0).bytes(2048),
        "truncated.pth": data[: len(data) // 2], "truncated.safetensors": whole[: len(whole) // 2],
        "corrupt.safetensors": np.random.default_rng(1).bytes(2048),
        "evil_raw.pth": pickle.dumps(Evil(root / "ran"), protocol=2),
    }
    for name, content in made.items():
        (root / name).write_bytes(content)
    torch.save({"model": Evil(root / "ran")}, root / "evil.pth")
    torch.save([1, 2, 3], root / "list.pth")
    nan = {k: v.clone() for k, v in model.state_dict().items()}
    next(v for v in nan.values() if v.is_floating_point()).fill_(float("nan"))
    torch.save({"model": nan}, root / "nan.pth")
    return root


@pytest.mark.parametrize("name, cause", [
    ("missing.pth", "no such file"), ("empty.pth", "is empty"),
    ("garbage.pth", "is not a checkpoint"), ("truncated.pth", "truncated or corrupt"),
    ("truncated.safetensors", "not a readable safetensors file"),
    ("corrupt.safetensors", "not a readable safetensors file"),
    ("evil.pth", r"pickles objects other than tensors \(posix.system\) and was refused"),
    ("evil_raw.pth", "cannot read as a checkpoint"),
])
def test_every_unreadable_checkpoint_is_one_line_naming_file_and_cause(files, name, cause):
    path = files / name
    for read in (lambda: read_checkpoint(path),
                 lambda: grootvl.load_checkpoint(GrootV(**SMALL), path),
                 lambda: load_weights(GrootV(**SMALL), path)):
        with pytest.raises(CheckpointError, match=cause) as info:
            read()
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not (files / "ran").exists()  # nothing in the file ran
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(files)


def test_checkpoint_contents_that_hold_no_weights_name_the_file(files):
    with pytest.raises(CheckpointError, match=r"list.pth holds a list, not a state dict"):
        grootvl.load_checkpoint(GrootV(**SMALL), files / "list.pth")
    with pytest.raises(UserError, match=r"nan.pth holds NaN or infinite weights in 1 of"):
        load_weights(GrootV(**SMALL), files / "nan.pth")
    model = GrootV(**SMALL)
    load_weights(model, files / "good.safetensors")
    with pytest.raises(UserError, match="good.pth does not fit grootv_tiny .* shape mis") as info:
        load_weights(GrootV(channels=16, depths=(1, 1, 1, 1), num_classes=2), files / "good.pth",
                     model_name="grootv_tiny")
    assert "\n" not in str(info.value)


def test_non_strict_load_reports_every_misshaped_tensor_and_loads_none():
    model = GrootV(**SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.zeros(*(s + 1 for s in v.shape)) if v.dim() else torch.zeros(2)
             for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = grootvl.load_checkpoint(model, state, strict=False)
    assert sorted(result.mismatched_keys) == sorted(state)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_model_options_from_a_file_cannot_allocate_without_bound():
    with pytest.raises(UserError, match=r"would have .* parameters .* check model.kwargs"):
        create_model("grootv_tiny", 2, channels=65536, depths=[1, 1, 1, 1])
    with pytest.raises(UserError, match=r"does not accept the options .*bogus"):
        create_model("grootv_tiny", 2, bogus=1)
    with pytest.raises(UserError, match="unexpected keyword argument 'bogus'") as info:
        create_model("grootv_tiny", 2, bogus=[["x"] * 10] * 10**4)  # a YAML alias bomb's size
    assert len(str(info.value)) < 500  # values are abridged in messages
    with pytest.raises(UserError, match="depths"):
        create_model("grootv_tiny", 2, channels=8, depths=[])
    from grootvl.models.dense import maskrcnn_grootv, upernet_grootv

    for build in (maskrcnn_grootv, upernet_grootv):  # checked before anything is built
        with pytest.raises(UserError, match=r"--backbone-kwargs .*depths must be a non-empty"):
            build("tiny", backbone_kwargs={"depths": [], "channels": 8})
    with pytest.raises(UserError, match="MaskRCNN takes no argument 'bogus'"):
        maskrcnn_grootv("tiny", backbone_kwargs={"depths": [1] * 4, "channels": 8}, bogus=1)


def test_dense_backbone_files_are_read_like_every_checkpoint(files):
    from grootvl.models.dense import upernet_grootv

    for name, cause in (("empty.pth", "is empty"), ("evil.pth", "was refused"),
                        ("nan.pth", "NaN or infinite weights")):
        with pytest.raises(UserError, match=f"pretrained_backbone .*{name}.* {cause}"):
            upernet_grootv("tiny", num_classes=2, pretrained_backbone=files / name,
                           backbone_kwargs={"depths": [1, 1, 1, 1], "channels": 8})
    assert not (files / "ran").exists()


# ---------------------------------------------------------------------------------- images

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(root / "ok.png")
    ok = (root / "ok.png").read_bytes()
    (root / "truncated.png").write_bytes(ok[: len(ok) // 2])
    (root / "garbage.png").write_bytes(b"not an image at all")
    (root / "bomb.png").write_bytes(bomb_png(100000, 100000))
    Image.fromarray(np.full((4, 4), 20000, np.uint16)).save(root / "16bit.png")
    return root


@pytest.mark.parametrize("name, cause", [("bomb.png", "decompression bomb"),
                                         ("truncated.png", "not a readable image"),
                                         ("garbage.png", "not a readable image"),
                                         ("none.png", "no such file")])
def test_unreadable_images_are_one_line_errors(images, name, cause):
    with pytest.raises(UnreadableImage, match=cause) as info:
        decode_image(images / name)
    assert info.value.path == str(images / name) and "\n" not in str(info.value)
    with pytest.raises(UserError, match=f"--image .*{name}"):
        load_images([str(images / name)])


def test_16_bit_images_are_scaled_not_clipped(images):
    for mode in ("RGB", "L"):
        values = np.asarray(decode_image(images / "16bit.png", mode))
        assert abs(int(values.max()) - round(20000 * 255 / 65535)) <= 1
    ((_, image),) = load_images([str(images / "16bit.png")])
    assert abs(float(np.asarray(image).mean()) - 20000 * 255 / 65535) < 1.5


def test_folder_skips_and_counts_unreadable_files_and_follows_no_symlink_loop(images, tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        shutil.copy(images / "ok.png", tmp_path / cls / "0.png")
    for name in ("bomb.png", "truncated.png"):
        shutil.copy(images / name, tmp_path / "a" / name)
    os.symlink("..", tmp_path / "a" / "loop")  # would list the data set again, as class a
    os.symlink(tmp_path / "b" / "0.png", tmp_path / "b" / "same.png")  # one file, two names
    ds = ImageFolderDataset(tmp_path)
    assert len(ds) == 4  # a/0, a/bomb, a/truncated, b/0
    skipped = [ds[i][2] for i in range(len(ds))]
    assert sorted(skipped) == [0, 0, 1, 2]  # each unreadable file replaced by the next readable
    # evaluation counts each readable image once: items standing in for another are dropped
    items = [ds[i] for i in range(len(ds))]
    pixels = torch.stack([torch.from_numpy(np.array(image)) for image, _, _ in items])
    images_, targets, replaced = drop_replaced(pixels, torch.tensor([i[1] for i in items]),
                                               torch.tensor([i[2] for i in items]), training=False)
    assert replaced == 2 and len(images_) == 2 and sorted(targets.tolist()) == [0, 1]
    (tmp_path / "a" / "0.png").unlink(), (tmp_path / "b" / "0.png").unlink()
    (tmp_path / "b" / "same.png").unlink()
    (tmp_path / "b" / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="no readable image"):
        ImageFolderDataset(tmp_path)[0]


def test_detection_and_segmentation_data_skip_and_count_unreadable_files(images, tmp_path):
    make_coco_shapes(tmp_path / "coco", n_images=3, size=48, split="train2017", seed=0,
                     max_shapes=1)
    first = sorted((tmp_path / "coco" / "train2017").iterdir())[0]
    first.write_bytes(bomb_png(100000, 100000))
    coco = CocoInstances(tmp_path / "coco" / "train2017",
                         tmp_path / "coco" / "annotations" / "instances_train2017.json")
    assert [coco[i][2] for i in range(len(coco))] == [1, 0, 0]
    make_ade_shapes(tmp_path / "ade", n_train=3, n_val=1, size=48, seed=0)
    label = sorted((tmp_path / "ade" / "annotations" / "training").iterdir())[1]
    label.write_bytes(b"not a png")
    ade = ADESegmentation(tmp_path / "ade", "training", 4, train=True, scale=(64, 48), crop_size=32)
    assert [ade[i][-1] for i in range(len(ade))] == [0, 1, 0]
    with pytest.raises(DataError, match=r"annotation file .* is not readable JSON"):
        CocoInstances(tmp_path / "coco" / "train2017", images / "garbage.png")
