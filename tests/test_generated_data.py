"""Classification data generated in memory (the ``generated`` config section): the samples the
classification task reads, and the errors that name the config key."""
from __future__ import annotations


import pytest
import torch

from grootvl.data import ArrayImageDataset, check_generated, digits_arrays, generated_datasets
from grootvl.errors import UserError



def test_array_dataset_normalises_like_to_tensor_and_normalize():
    images = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    ds = ArrayImageDataset(images, torch.tensor([3]), mean=(0.5, 0.2, 0.1), std=(0.5, 0.4, 0.2),
                           in_chans=3)
    x, label, skipped = ds[0]
    assert x.shape == (3, 2, 2) and (label, skipped) == (3, 0)
    grey = images[0].float() / 255
    for c, (m, s) in enumerate(((0.5, 0.5), (0.2, 0.4), (0.1, 0.2))):
        torch.testing.assert_close(x[c], (grey - m) / s)
    with pytest.raises(UserError, match=r"data.mean = \[0.5, 0.5\]: give 1 or data.in_chans = 3"):
        ArrayImageDataset(images, torch.tensor([0]), mean=(0.5, 0.5), std=(0.5,), in_chans=3)


def test_digits_subsets_and_classes():
    train, val, classes = generated_datasets("digits", 16, train_images=100, val_images=50)
    full_x, full_y, _, _ = digits_arrays(16)
    assert (len(train), len(val)) == (100, 50) and classes == [str(d) for d in range(10)]
    assert torch.equal(train.images, full_x[:100]) and torch.equal(train.labels, full_y[:100])
    assert full_x.dtype == torch.uint8 and full_x.shape[1:] == (16, 16)


def test_pathfinder_validation_images_continue_the_training_stream():
    from grootvl.data.pathfinder import pathfinder

    train, val, classes = generated_datasets("pathfinder", 32, 6, 4, seed=3)
    images, labels = pathfinder(10, 32, 3)
    assert torch.equal(torch.cat([train.images, val.images]), images)
    assert torch.equal(torch.cat([train.labels, val.labels]), labels)
    assert len(classes) == 2


@pytest.mark.parametrize("args, message", [
    (("digits", 32, 2000), "generated.train_images = 2000: the digits have 1437 such images"),
    (("digits", 32, None, 400), "generated.val_images = 400: the digits have 360 such images"),
    (("digits", 32, None, None, 0, {"size": 3}), "the digits take no options"),
    (("digits", 100_000), "data.img_size = 100000: the digits are 8x8 images, upsampled to at most 512"),
    (("pathfinder", 32, None, 10), "generated.train_images is null: pathfinder images are "
                                   "generated, say how many"),
    (("pathfinder", 1024, 10**9, 10), "1000000010 images of 1024x1024 pixels need "),
    (("mnist", 32), "generated.name = 'mnist': not a generated data set; use one of digits, "
                    "pathfinder"),
])
def test_bad_settings_name_the_config_key(args, message):
    with pytest.raises(UserError, match=message):
        check_generated(*args)
    with pytest.raises(UserError, match=message):
        generated_datasets(*args)
