"""The typed run config: every bad value is one line naming key, value, what is allowed and
where it came from (config file, --set, flag, checkpoint); printed configs read back."""
from __future__ import annotations

import pytest
import torch

from grootvl.cli.main import main
from grootvl.engine.config import dump_config, packaged_config_names
from grootvl.errors import UserError
from grootvl.tasks import load_config
from grootvl.tasks.config import PACKAGED_CONFIGS, config_from_snapshot


def _error(**kwargs) -> str:
    with pytest.raises(UserError) as info:
        load_config(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("override, allowed", [
    ("train.batch_size=0", "greater than 0"),
    ("sched.epochs=2.5", "valid integer"),
    ("optim.accum_steps=-1", "greater than 0"),
    ("train.log_every=0", "greater than 0"),
    ("data.img_size=0", "greater than 0"),
    ("data.in_chans=0", "greater than 0"),
    ("data.num_workers=-1", "greater than or equal to 0"),
    ("model.drop_path_rate=1.0", "less than 1"),
    ("optim.base_lr=0", "greater than 0"),
    ("optim.weight_decay=-0.1", "greater than or equal to 0"),
    ("optim.clip_grad=0", "greater than 0"),
    ("sched.warmup_epochs=-1", "greater than or equal to 0"),
    ("ema.decay=1", "less than 1"),
    ("sched.name=linear", "'cosine', 'tanh', 'multistep', 'poly' or 'constant'"),
    ("train.amp=fp8", "'auto', 'none', 'bf16' or 'fp16'"),
    ("train.progress=fancy", "'auto', 'bar', 'log' or 'none'"),
    ("train.device=gpu", "auto, cpu, cuda or cuda:N"),
    ("optim.name=adamx", "did you mean adamax"),
    ("optim.betas=[0.9, 1.5]", "[0, 1)"),
    ("aug.scale=[0.5]", "too few values"),
    ("task=pose", "'classification', 'detection' or 'segmentation'"),
])
def test_set_errors_name_key_value_allowed_and_origin(override, allowed):
    key, value = override.split("=", 1)
    message = _error(overrides=[override])
    assert message.startswith(f"{key} = "), message
    assert value.strip("[]").split(",")[0] in message
    assert allowed in message and f"(from --set {override})" in message


def test_file_flag_and_checkpoint_origins(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: grootv_tiny\ntrain:\n  batch_size: -4\n")
    message = _error(config=str(bad))
    assert message == (f"train.batch_size = -4 (from config {bad}): input should be greater "
                       "than 0")
    message = _error(flags={"train.batch_size": (0, "--batch-size")})
    assert "(from --batch-size)" in message
    # later layers win: a flag repairs a bad file value, --set a bad flag does not
    assert load_config(str(bad), flags={"train.batch_size": (8, "--batch-size")}).train.batch_size == 8
    with pytest.raises(UserError, match=r"\(from checkpoint run/last.pth\)"):
        config_from_snapshot({"config": {"ema": {"decay": 1.5}}}, "run/last.pth")


def test_unknown_keys_suggest_the_closest_with_their_origin(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("optim:\n  base_lrr: 0.1\n")
    assert _error(config=str(typo)).startswith(
        f"config {typo}: unknown config key 'optim.base_lrr'; did you mean optim.base_lr")
    assert "did you mean train.batch_size" in _error(overrides=["train.batch_sise=3"])
    # free-form sections take any key
    assert load_config(overrides=["model.kwargs.anything=1"]).model.kwargs == {"anything": 1}


def test_several_problems_are_listed_on_one_line():
    message = _error(overrides=["train.batch_size=0", "ema.decay=2"])
    assert "train.batch_size" in message and "ema.decay" in message and "; " in message


def test_section_checks_name_every_origin():
    message = _error(overrides=["sched.warmup_steps=5", "sched.step_on_epochs=true"])
    assert message.startswith("sched: warmup_steps counts optimizer steps")
    assert "--set sched.warmup_steps=5" in message and "--set sched.step_on_epochs=true" in message


@pytest.mark.parametrize("name", packaged_config_names(PACKAGED_CONFIGS))
def test_printed_configs_read_back_identically(name, tmp_path):
    cfg = load_config(name)
    path = tmp_path / "printed.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(str(path)) == cfg


def test_snapshot_configs_go_through_the_schema(tmp_path):
    cfg = load_config("demo", overrides=["model.kwargs={channels: 8}"])
    restored = config_from_snapshot({"config": cfg.model_dump(mode="json")}, "x.pth")
    assert restored == cfg
    torch.save({"config": cfg.model_dump(mode="json")}, tmp_path / "s.pth")
    assert config_from_snapshot(torch.load(tmp_path / "s.pth", weights_only=True), "s.pth") == cfg


def test_cli_reports_a_bad_flag_in_one_line(capsys):
    assert main(["train", "--data", "x", "--batch-size", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["grootvl train: error: train.batch_size = 0 (from --batch-size): input "
                   "should be greater than 0"]
    assert main(["det-train", "--output", "o", "--set", "sched.name=step"]) == 2
    assert "sched.name = 'step' (from --set sched.name=step)" in capsys.readouterr().err


def test_print_config_shows_every_key_with_its_description(capsys):
    assert main(["seg-train", "--output", "o", "--print-config", "--num-classes", "7"]) == 0
    out = capsys.readouterr().out
    assert "task: segmentation" in out and "  num_classes: 7  # K: labels" in out
    assert "  warmup_steps: 1500  # warm-up length in optimizer steps" in out
