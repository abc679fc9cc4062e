"""det-train / seg-train / det-eval / seg-eval end to end on generated COCO and ADE data.

Each command runs in-process through its argparse front end (``grootvl.cli.dense``), with a
reduced GrootV so that a few epochs take seconds on a CPU.
"""
from __future__ import annotations

import argparse
import json

import pytest

from grootvl.cli import dense as dense_cli
from grootvl.data import make_ade_shapes, make_coco_shapes
from grootvl.engine.progress import read_jsonl

BACKBONE = '{"depths": [1, 1, 1, 1], "channels": 16}'


def run_cli(*argv) -> int:
    parser = argparse.ArgumentParser(prog="grootvl")
    dense_cli.register(parser.add_subparsers())
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    make_coco_shapes(root, n_images=8, size=96, split="train2017", seed=0, max_shapes=2)
    make_coco_shapes(root, n_images=2, size=96, split="val2017", seed=1, max_shapes=2)
    return root


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    make_ade_shapes(root, n_train=8, n_val=2, size=96, seed=0)
    return root


def _det_args(coco_root, output, epochs, *extra):
    return ["det-train", "--data", coco_root, "--model", "tiny", "--backbone-kwargs", BACKBONE,
            "--output", output, "--epochs", epochs, "--batch-size", 2, "--lr", 3e-4,
            "--warmup-iters", 2, "--lr-steps", "--min-size", 96, "--max-size", 96,
            "--fpn-channels", 32, "--box-head-dim", 64, "--mask-head-channels", 32,
            "--detector-kwargs", '{"box_batch_size_per_image": 64, "rpn_post_nms_top_n_train": 300,'
            ' "rpn_post_nms_top_n_test": 100, "box_detections_per_img": 20}',
            "--workers", 0, "--device", "cpu", "--amp", "none", "--progress", "none",
            "--log-every", 1, "--eval-every", 100, *extra]


def _train_resume_and_eval(train_args, eval_command, data_root, tmp_path):
    """Train 2 epochs, resume the same run for a 3rd, then evaluate its last.pth.

    det and seg share one training loop, so both must pass the same resume and loss checks.
    Returns (metrics.json after 2 epochs, metrics.json after 3, the eval command's JSON).
    """
    out = tmp_path / "run"
    assert run_cli(*train_args(data_root, out, 2)) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert first["epoch"] == 1
    assert (out / "best.pth").is_file() and (out / "last.pth").is_file()

    assert run_cli(*train_args(data_root, out, 3, "--resume", "auto")) == 0
    log = read_jsonl(out / "log.jsonl")
    starts = [r for r in log if r["event"] == "start"]
    assert starts[-1]["start_epoch"] == 2 and starts[-1]["resumed_from"].endswith("last.pth")
    epochs = [r for r in log if r["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert epochs[-1]["global_step"] == 12  # 3 epochs x 4 steps: no step repeated or lost
    losses = [e["train_loss"] for e in epochs]
    print(f"train loss per epoch {[round(v, 3) for v in losses]}")
    assert losses[-1] < 0.9 * losses[0], losses
    final = json.loads((out / "metrics.json").read_text())

    eval_json = tmp_path / "eval.json"
    assert run_cli(eval_command, "--checkpoint", out / "last.pth", "--data", data_root,
                   "--output", eval_json, "--workers", 0, "--device", "cpu",
                   "--progress", "none") == 0
    return first, final, json.loads(eval_json.read_text())


def test_det_train_lowers_loss_writes_coco_metrics_and_resumes(coco_root, tmp_path):
    first, final, result = _train_resume_and_eval(_det_args, "det-eval", coco_root, tmp_path)
    for iou_type in ("bbox", "segm"):
        assert set(first[iou_type]) >= {"AP", "AP50", "AP75"}
        assert 0.0 <= first[iou_type]["AP"] <= 100.0
    print(f"det val bbox AP {final['bbox']['AP']}, segm AP {final['segm']['AP']}")
    assert result["num_images"] == 2 and result["bbox"] == final["bbox"]
    assert result["segm"] == final["segm"]


def _seg_args(ade_root, output, epochs, *extra):
    return ["seg-train", "--data", ade_root, "--num-classes", 4, "--model", "tiny",
            "--backbone-kwargs", BACKBONE, "--decoder-channels", 32, "--crop-size", 64,
            "--scale", 128, 96, "--output", output, "--epochs", epochs, "--batch-size", 2,
            "--lr", 2e-3, "--warmup-iters", 2, "--workers", 0, "--device", "cpu",
            "--amp", "none", "--progress", "none", "--log-every", 1, "--eval-every", 100, *extra]


def test_seg_train_lowers_loss_writes_miou_and_resumes(ade_root, tmp_path):
    first, final, result = _train_resume_and_eval(_seg_args, "seg-eval", ade_root, tmp_path)
    assert 0.0 <= first["mIoU"] <= 100.0 and set(first["per_class_IoU"]) == {"1", "2", "3", "4"}
    print(f"seg val mIoU {final['mIoU']}, aAcc {final['aAcc']}")
    assert result["mIoU"] == final["mIoU"] and result["aAcc"] == final["aAcc"]


def test_cli_bad_input_exits_2_with_a_clear_message(coco_root, tmp_path, capsys):
    code = run_cli(*_det_args(coco_root, tmp_path / "x", 1, "--train-ann",
                              tmp_path / "missing.json"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "missing.json not found (--train-ann)" in err

    ann = json.loads((coco_root / "annotations" / "instances_val2017.json").read_text())
    ann["annotations"][0]["category_id"] = 42
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(ann))
    code = run_cli("det-eval", "--checkpoint", tmp_path / "none.pth", "--data", coco_root,
                   "--val-ann", bad, "--device", "cpu")
    err = capsys.readouterr().err
    assert code == 2 and "category_id 42" in err and "bad.json" in err

    code = run_cli("seg-train", "--data", tmp_path, "--output", tmp_path / "s", "--device", "cpu")
    err = capsys.readouterr().err
    assert code == 2 and "images/training not found (--data" in err
