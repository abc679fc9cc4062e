"""Unusable arguments of the operators, layers and models give a ValueError/TypeError that
names the argument and what is allowed, instead of a deep torch error or a silent model."""
from __future__ import annotations

import math

import pytest
import torch

from grootvl.layers import TreeSSM
from grootvl.models import GrootV
from grootvl.ops import grid_edges, grid_tree
from grootvl.ops.arguments import check_int, check_real

TINY = dict(channels=8, depths=(1, 1, 1, 1), num_classes=2)

GROOTV_BAD = [
    ({"in_chans": 0}, "in_chans must be a positive int"),
    ({"in_chans": -1}, "in_chans must be a positive int"),
    ({"in_chans": 2.5}, "in_chans must be a positive int"),
    ({"in_chans": True}, "in_chans must be a positive int"),
    ({"channels": 0}, "channels must be an even int >= 2"),
    ({"channels": -8}, "channels must be an even int >= 2"),
    ({"channels": 3}, "channels must be an even int >= 2"),
    ({"channels": 8.0}, "channels must be an even int >= 2"),
    ({"channels": "8"}, "channels must be an even int >= 2"),
    ({"depths": []}, "depths must be a non-empty sequence of ints >= 1"),
    ({"depths": [0, 1, 1, 1]}, "depths must be a non-empty sequence"),
    ({"depths": [-1, 1, 1, 1]}, "depths must be a non-empty sequence"),
    ({"depths": [1.5, 1, 1, 1]}, "depths must be a non-empty sequence"),
    ({"depths": "1111"}, "depths must be a non-empty sequence"),
    ({"depths": None}, "depths must be a non-empty sequence"),
    ({"depths": 4}, "depths must be a non-empty sequence"),
    ({"num_classes": -1}, "num_classes must be an int >= 0"),
    ({"num_classes": 2.5}, "num_classes must be an int >= 0"),
    ({"mlp_ratio": 0}, "mlp_ratio must be a finite number in (0, inf)"),
    ({"mlp_ratio": float("nan")}, "mlp_ratio must be a finite number"),
    ({"mlp_ratio": 0.01}, "mlp_ratio=0.01 gives the MLP"),
    ({"drop_path_rate": -0.1}, "drop_path_rate must be a finite number in [0, 1)"),
    ({"drop_path_rate": 1.0}, "drop_path_rate must be a finite number in [0, 1)"),
    ({"drop_path_rate": float("nan")}, "drop_path_rate must be a finite number in [0, 1)"),
    ({"drop_rate": 2.0}, "drop_rate must be a finite number in [0, 1)"),
    ({"head_scale": 0}, "head_scale must be a finite number in (0, inf)"),
    ({"head_scale": 0.001}, "head_scale=0.001 gives the head convolution"),
]


@pytest.mark.parametrize("overrides, message", GROOTV_BAD, ids=[repr(o) for o, _ in GROOTV_BAD])
def test_grootv_refuses_unusable_arguments(overrides, message):
    with pytest.raises(ValueError) as info:
        GrootV(**{**TINY, **overrides})
    assert message in str(info.value)
    key, value = next(iter(overrides.items()))
    assert repr(value) in str(info.value) or key in str(info.value)


def test_grootv_accepts_edge_values():
    model = GrootV(channels=2, depths=[1], num_classes=0, in_chans=1, drop_path_rate=0.0)
    assert model(torch.rand(1, 1, 8, 8)).shape == (1, model.num_features)


@pytest.mark.parametrize("shape, dtype, message", [
    ((1, 3, 0, 32), torch.float32, "got shape (1, 3, 0, 32)"),
    ((3, 32, 32), torch.float32, "got shape (3, 32, 32)"),
    ((1, 4, 32, 32), torch.float32, "C = in_chans = 3 channels"),
    ((1, 3, 32, 32), torch.long, "floating-point image tensor, got torch.int64"),
])
def test_grootv_forward_names_bad_input(shape, dtype, message):
    model = GrootV(**TINY).eval()
    with pytest.raises((ValueError, TypeError)) as info:
        model(torch.zeros(shape, dtype=dtype))
    assert message in str(info.value)


@pytest.mark.parametrize("overrides, message", [
    ({"d_model": 0}, "d_model must be a positive int"),
    ({"expand": 0}, "expand must be a finite number in (0, inf)"),
    ({"expand": 0.01}, "expand=0.01 gives"),
    ({"dt_rank": 0}, "dt_rank must be a positive int"),
    ({"dt_min": -1.0}, "dt_min must be a finite number in (0, inf)"),
    ({"dt_max": 1e-4}, "dt_max must be a finite number in [0.001, inf) (at least dt_min)"),
    ({"d_conv": 2}, "d_conv must be an odd kernel size"),
    ({"d_conv": "3"}, "d_conv must be an odd kernel size"),
])
def test_tree_ssm_refuses_unusable_arguments(overrides, message):
    with pytest.raises(ValueError) as info:
        TreeSSM(**{"d_model": 16, **overrides})
    assert message in str(info.value)


@pytest.mark.parametrize("impl", ["numba", "torch"])
@pytest.mark.parametrize("height, width", [(0, 5), (3, 0), (0, 0)])
def test_grid_tree_refuses_an_empty_grid(impl, height, width):
    with pytest.raises(ValueError, match="empty grid: height H = .* must both be >= 1"):
        grid_tree(torch.rand(1, 4, height, width), impl=impl)


def test_grid_tree_on_one_pixel_and_empty_batch():
    assert grid_tree(torch.rand(1, 4, 1, 1)).order.shape == (1, 1)
    assert grid_tree(torch.rand(0, 4, 3, 5)).order.shape == (0, 15)
    with pytest.raises(ValueError, match="width must be a positive int, got 0"):
        grid_edges(3, 0)


def test_argument_checks_messages():
    assert check_int("n", 3) == 3
    with pytest.raises(ValueError, match=r"n must be an int >= 0 \(count\), got True"):
        check_int("n", True, 0, " (count)")
    assert check_real("p", 1, 0, 1) == 1.0
    for bad in (1.0, math.nan, math.inf, "0.5", None):
        with pytest.raises(ValueError, match=r"p must be a finite number in \[0, 1\), got"):
            check_real("p", bad, 0, 1, high_open=True)
