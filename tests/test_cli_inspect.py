"""``grootvl demo``, ``visualize``, ``flops`` and ``benchmark`` on tiny GrootV models, and the
tree/propagation-weight capture behind the pictures."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from grootvl.cli.main import main
from grootvl.models.factory import create_model
from grootvl.ops import grid_tree
from grootvl.visualize import capture_block, propagation_weights

TINY_GROOTV = ["--set", "channels=16", "--set", "depths=[1,1,1,1]"]


def test_demo_smoke_writes_checkpoint_metrics_and_pngs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--epochs", "1", "--limit-train-steps", "2",
                 "--progress", "none", "--set", "model.kwargs.channels=16",
                 "--set", "model.kwargs.depths=[1,1,1,1]"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_images"] == 360 and 0.0 <= metrics["test_accuracy"] <= 100.0
    assert len(metrics["epochs"]) == 1 and metrics["wall_time_s"] > 0
    assert (out / "last.pth").is_file() and len(list((out / "data" / "train").iterdir())) == 10
    for png in ("training_curve.png", "tree.png"):
        with Image.open(out / png) as img:
            assert img.format == "PNG" and img.width > 400
    assert "test accuracy" in capsys.readouterr().err


def test_visualize_sklearn_sample_images(tmp_path, capsys):
    assert main(["visualize", "--output", str(tmp_path), "--img-size", "64", "--stage", "1",
                 "--pixel", "0.25", "0.75", *TINY_GROOTV]) == 0
    paths = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["china_stage1_block0.png",
                                                     "flower_stage1_block0.png"]
    with Image.open(paths[0]) as img:
        assert img.format == "PNG"


def test_visualize_user_errors(tmp_path, capsys):
    assert main(["visualize", "--output", str(tmp_path), "--img-size", "32", "--stage", "7",
                 *TINY_GROOTV]) == 2
    assert "stages 0..3" in capsys.readouterr().err
    assert main(["visualize", "--image", str(tmp_path / "none.jpg")]) == 2
    assert main(["visualize", "--model", "test_efficientnet", "--img-size", "32",
                 "--output", str(tmp_path)]) == 2
    assert "not a GrootV model" in capsys.readouterr().err


def _path_to_root(parent, v):
    path = [v]
    while parent[path[-1]] >= 0:
        path.append(int(parent[path[-1]]))
    return path


def test_captured_tree_and_propagation_weights_match_definitions():
    torch.manual_seed(0)
    model = create_model("grootv_tiny", 10, channels=16, depths=(1, 1, 1, 1))
    image = torch.randn(3, 32, 32)
    cap = capture_block(model, image, stage=0, block=0)
    assert (cap.height, cap.width) == (8, 8)
    # the tree the block used is the MST of the captured guide
    assert torch.equal(grid_tree(cap.guide.unsqueeze(0)).parent, cap.tree.parent)
    p = 27
    s = propagation_weights(cap, p).flatten().double()
    parent = cap.parent.tolist()
    lam = cap.decay.double()
    to_p = _path_to_root(parent, p)
    for i in (0, 5, 27, 40, 63):  # S(p, i) = product of child-end decays on the path, channel mean
        to_i = _path_to_root(parent, i)
        common = set(to_p) & set(to_i)
        children = [v for v in to_p + to_i if v not in common]
        expected = lam[children].prod(dim=0).mean() if children else torch.tensor(1.0)
        assert s[i].item() == pytest.approx(expected.item(), rel=1e-5)


def test_flops_and_benchmark(tmp_path, capsys):
    flops_json = tmp_path / "flops.json"
    assert main(["flops", "--img-size", "32", "--num-classes", "10", "--json", str(flops_json),
                 *TINY_GROOTV]) == 0
    flops = json.loads(capsys.readouterr().out)
    assert flops["gflops"] > 0 and flops["params"] > 0 and flops["tree_gflops"]["scan"] > 0
    assert json.loads(flops_json.read_text()) == flops
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--img-size", "32", "--batch-size", "2", "--iters", "1", "--warmup", "1",
                 "--device", "cpu", "--json", str(out), *TINY_GROOTV]) == 0
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == ["inference", "train"]
    assert all(r["img_per_s"] > 0 and r["peak_memory_mb"] > 0 for r in rows)
