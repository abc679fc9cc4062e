"""Every command's options are checked before it runs (the run config's schema for the
training and evaluation commands, ``grootvl.cli.options`` for the others), and every output
path is checked too: each bad value is one error line naming the option and what is allowed."""
from __future__ import annotations

import pytest
import torch

from grootvl.cli.main import main
from grootvl.models import GrootV


def _fails(capsys, argv, *needles):
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"grootvl {argv[0]}: error: "), lines
    for needle in needles:
        assert needle in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "weights.pth"
    torch.save({"model": GrootV(channels=8, depths=(1, 1, 1, 1), num_classes=2).state_dict()}, path)
    return path


@pytest.mark.parametrize("argv, needles", [
    (["eval", "--batch-size", "0"], ("train.batch_size = 0 (from --batch-size)",)),
    (["eval", "--workers=-1"], ("data.num_workers = -1 (from --workers)",)),
    (["eval", "--img-size", "100000"], ("data.img_size = 100000", "8192")),
    (["eval", "--in-chans", "2"], ("data.in_chans = 2", "1 or 3")),
    (["det-eval", "--batch-size", "0"], ("detection.eval_batch_size = 0",)),
    (["seg-eval", "--scale", "0", "0"], ("segmentation.scale.0 = 0 (from --scale)",)),
    (["visualize", "--img-size", "0"], ("img_size = 0 (from --img-size)",)),
    (["visualize", "--img-size", "100000"], ("less than or equal to 8192",)),
    (["visualize", "--pixel", "2", "2"], ("pixel", "[0, 1]")),
    (["benchmark", "--warmup=-1"], ("warmup = -1 (from --warmup)",)),
    (["benchmark", "--img-size", "100000"], ("img_size = 100000",)),
    (["flops", "--in-chans", "0"], ("in_chans = 0 (from --in-chans)",)),
    (["lm-finetune", "--lr", "inf"], ("lr = inf (from --lr): input should be a finite number",)),
    (["lm-finetune", "--lora-r", "0"], ("lora_r = 0 (from --lora-r)",)),
    (["lm-finetune", "--epochs", "nan"], ("epochs = nan (from --epochs)",)),
    (["lm-finetune", "--grad-accum=-1"], ("grad_accum = -1",)),
    (["lm-finetune", "--tree-scale=-1"], ("tree_scale = -1.0 (from --tree-scale)",)),
    (["lm-merge", "--tree-scale", "nan"], ("tree_scale = nan",)),
    (["lm-demo", "--finetune-steps=-1"], ("finetune_steps = -1 (from --finetune-steps)",)),
    (["det-train", "--detector-kwargs", '{"bogus": 1}'], ("MaskRCNN takes no argument 'bogus'",)),
])
def test_options_are_checked_before_anything_runs(capsys, argv, needles):
    required = {"eval": ["--checkpoint", "none.pth", "--data", "none"],
                "det-eval": ["--checkpoint", "none.pth", "--data", "none"],
                "seg-eval": ["--checkpoint", "none.pth", "--data", "none"],
                "lm-finetune": ["--model", "m", "--data", "d", "--output-dir", "o"],
                "lm-merge": ["--base", "b", "--adapter", "a", "--output-dir", "o"],
                "det-train": ["--output", "o"]}.get(argv[0], [])
    _fails(capsys, [*argv, *required], *needles)


def test_paths_are_checked(capsys, checkpoint, tmp_path):
    folder = tmp_path / "data" / "val" / "a"
    folder.mkdir(parents=True)
    (tmp_path / "data" / "train").mkdir()
    _fails(capsys, ["eval", "--checkpoint", checkpoint, "--data", tmp_path / "data", "--split",
                    "nope"], "--split nope", "no sub-folder 'nope' (it has train, val)")
    _fails(capsys, ["eval", "--checkpoint", checkpoint, "--data", tmp_path / "data", "--json",
                    tmp_path], f"--json {tmp_path} is a folder")
    _fails(capsys, ["visualize", "--output", checkpoint, "--set", "channels=8"],
           f"--output {checkpoint} is a file")
    _fails(capsys, ["lm-demo", "--output-dir", checkpoint], f"--output-dir {checkpoint} is a file")
    _fails(capsys, ["demo", "--output", tmp_path / "demo", "--data-dir", checkpoint],
           "(--data-dir) is a file")
    _fails(capsys, ["lm-finetune", "--model", tmp_path, "--data", tmp_path, "--output-dir",
                    tmp_path / "o"], "--model", "config.json")
