"""End-to-end tests of ``grootvl train`` / ``grootvl eval``: training, resumption after a
SIGKILL, two-process DistributedDataParallel on CPU (gloo), and user-error handling.

A tiny timm model (test_efficientnet) on 32x32 PNGs keeps each run to a few seconds; the
engine is model-agnostic, GrootV-specific commands are tested in test_cli_inspect.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from grootvl.cli.main import main
from grootvl.engine.progress import read_jsonl

EPOCHS, STEPS = 2, 3  # 3 optimizer steps per epoch (batch 4 of 24 training images)
TINY = ["--model", "test_efficientnet", "--img-size", "32", "--batch-size", "4",
        "--epochs", str(EPOCHS), "--warmup-epochs", "1", "--workers", "0", "--progress", "none",
        "--limit-train-steps", str(STEPS), "--device", "cpu", "--seed", "7"]


def make_image_folder(root, classes=("ant", "bee", "cat"), n_train=8, n_val=4):
    """Classes told apart by brightness, with noise: learnable, not trivial."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.normal(60 + 70 * c, 25, (32, 32, 3)).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _env():
    """Subprocess env: same thread count as this process, so results are bit-identical."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("folder"))


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert main(["train", "--data", str(data), "--output", str(out), *TINY]) == 0
    return out


def _epochs(out):
    return [r for r in read_jsonl(out / "log.jsonl") if r["event"] == "epoch"]


def _end(out):
    return [r for r in read_jsonl(out / "log.jsonl") if r["event"] == "end"][-1]


def test_train_writes_checkpoints_and_logs_then_eval_reproduces_best(reference_run, data, capsys,
                                                                     tmp_path):
    out = reference_run
    for name in ("last.pth", "best.pth", "ema_best.pth", "config.yaml", "log.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    start = read_jsonl(out / "log.jsonl")[0]
    assert start["event"] == "start" and start["lr"] == pytest.approx(5e-4 * 4 / 512)
    assert start["optimizer"] == "AdamW" and start["fused_update"] is True
    epochs = _epochs(out)
    assert [r["epoch"] for r in epochs] == list(range(EPOCHS))
    assert all(r["global_step"] == STEPS * (r["epoch"] + 1) for r in epochs)
    assert all(np.isfinite(r["train_loss"]) and r["val_count"] == 12 for r in epochs)
    last = torch.load(out / "last.pth", weights_only=False)
    assert last["epoch"] == EPOCHS - 1 and last["arch"] == "test_efficientnet"
    assert {"model", "model_ema", "optimizer", "lr_scheduler", "rng"} <= set(last)

    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "best.pth"), "--data", str(data),
                 "--workers", "0", "--device", "cpu", "--json", str(tmp_path / "eval.json")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads((tmp_path / "eval.json").read_text()) == result
    assert result["count"] == 12 and result["model"] == "test_efficientnet"
    assert result["top1"] == pytest.approx(_end(out)["best_top1"])  # same weights, same data
    assert main(["eval", "--checkpoint", str(out / "last.pth"), "--use-ema", "--data",
                 str(data / "val"), "--workers", "0", "--device", "cpu"]) == 0


def test_sigkill_mid_epoch_then_resume_auto_matches_uninterrupted_run(reference_run, data, tmp_path):
    out = tmp_path / "run"
    crashed = subprocess.run(
        [sys.executable, "-m", "grootvl", "train", "--data", str(data), "--output", str(out), *TINY,
         "--simulate-crash-at-step", str(STEPS + 1)],  # first step of the second epoch
        env=_env(), capture_output=True, text=True, timeout=300)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert torch.load(out / "last.pth", weights_only=False)["epoch"] == 0
    assert not list(out.glob(".*.tmp"))

    assert main(["train", "--data", str(data), "--output", str(out), *TINY, "--resume", "auto"]) == 0
    assert [r["epoch"] for r in _epochs(out)] == list(range(EPOCHS))  # each epoch logged once
    assert torch.load(out / "last.pth", weights_only=False)["epoch"] == EPOCHS - 1
    assert (out / "best.pth").is_file() and (out / "ema_best.pth").is_file()
    starts = [r for r in read_jsonl(out / "log.jsonl") if r["event"] == "start"]
    assert starts[-1]["start_epoch"] == 1 and starts[-1]["resumed_from"].endswith("last.pth")
    # model, optimizer, scheduler and RNG state all restored: same result as never stopping
    assert _end(out)["param_checksums"] == pytest.approx(_end(reference_run)["param_checksums"],
                                                         rel=1e-6)
    assert _epochs(out)[-1]["train_loss"] == pytest.approx(_epochs(reference_run)[-1]["train_loss"],
                                                            rel=1e-5)


def test_torchrun_two_processes_gloo_stay_in_sync(data, tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", "-m", "grootvl", "train", "--data", str(data), "--output", str(out),
         *TINY, "--epochs", "1", "--set", "train.limit_train_steps=2"],
        env={**_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = read_jsonl(out / "log.jsonl")[0]
    assert start["world_size"] == 2 and start["lr"] == pytest.approx(5e-4 * 8 / 512)
    checksums = _end(out)["param_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # DDP kept the ranks identical
    epoch = _epochs(out)[0]
    assert epoch["val_count"] == 12  # each val image counted once across the two ranks


# ------------------------------------------------------------------------- user errors

def _fails(capsys, argv, *needles):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_missing_and_empty_data_folders(tmp_path, capsys):
    _fails(capsys, ["train", "--data", str(tmp_path / "nowhere"), *TINY], "does not exist")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    _fails(capsys, ["train", "--data", str(tmp_path / "empty"), *TINY],
           "has no class folders", "one sub-folder per class")
    _fails(capsys, ["train", *TINY], "no data folder given", "--data")


def test_class_missing_in_val(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d")
    shutil.rmtree(data / "val" / "bee")
    _fails(capsys, ["train", "--data", str(data), *TINY], "validation folder", "bee")


def test_unreadable_image_is_skipped_with_warning_and_counted(tmp_path, caplog):
    data = make_image_folder(tmp_path / "d")
    (data / "train" / "ant" / "0.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--output", str(out), *TINY, "--epochs", "1",
                 "--limit-train-steps", "6", "--set", "aug.mixup=0", "--set", "aug.cutmix=0"]) == 0
    assert "skipping unreadable image" in caplog.text and "0.png" in caplog.text
    assert _epochs(out)[0]["skipped_images"] >= 1


def test_checkpoint_of_another_architecture(reference_run, data, capsys):
    _fails(capsys, ["eval", "--checkpoint", str(reference_run / "best.pth"), "--data", str(data),
                    "--model", "test_convnext", "--workers", "0", "--device", "cpu"],
           "does not fit test_convnext", "test_efficientnet")
    _fails(capsys, ["train", "--data", str(data), "--output", str(reference_run), *TINY,
                    "--model", "test_convnext", "--resume", "auto"], "checkpoint is for model")


def test_bad_options(data, capsys):
    _fails(capsys, ["train", "--data", str(data), *TINY, "--set", "optim.lrate=1"], "optim.lrate")
    _fails(capsys, ["train", "--data", str(data), *TINY, "--model", "resnet_18"], "not a timm model")
    _fails(capsys, ["train", "--data", str(data), *TINY, "--batch-size", "64"], "lower --batch-size")


def test_eval_rebuilds_the_model_with_the_checkpoints_kwargs(data, tmp_path, capsys):
    # channel_multiplier changes every layer's width: eval must read it from the checkpoint
    out = tmp_path / "wide"
    assert main(["train", "--data", str(data), "--output", str(out), *TINY, "--epochs", "1",
                 "--limit-train-steps", "1", "--no-ema",
                 "--set", "model.kwargs={channel_multiplier: 1.5}"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "best.pth"), "--data", str(data),
                 "--workers", "0", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == "test_efficientnet" and result["model_kwargs"] == {"channel_multiplier": 1.5}
    assert result["top1"] == pytest.approx(_end(out)["best_top1"])

    # a checkpoint whose config lost its model section cannot be rebuilt: say so
    ckpt = torch.load(out / "best.pth", weights_only=True)
    del ckpt["config"]["model"]
    torch.save(ckpt, tmp_path / "no_model_config.pth")
    _fails(capsys, ["eval", "--checkpoint", str(tmp_path / "no_model_config.pth"), "--data",
                    str(data), "--workers", "0", "--device", "cpu"],
           "no_model_config.pth", "model.name", "--model")
