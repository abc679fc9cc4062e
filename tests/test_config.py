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
    ("data.img_size=0", "greater than or equal to 1"),
    ("data.in_chans=0", "input should be 1 or 3"),
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


@pytest.mark.parametrize("override, allowed", [
    ("data.img_size=true", "a boolean is not a number"),
    ("train.batch_size=false", "a boolean is not a number"),
    ("optim.betas=[true, 0.9]", "a boolean is not a number"),
    ("optim.base_lr=.inf", "finite number"),
    ("ema.decay=.nan", "finite number"),
    ("data.img_size=100000", "less than or equal to 8192"),
    ("data.in_chans=2", "1 or 3"),
    ("segmentation.scale=[0, 0]", "greater than or equal to 1"),
    ("detection.fpn_channels=1000000", "less than or equal to 4096"),
    ("aug.scale=[1.0, 0.08]", "smallest <= largest"),
    ("aug.auto_augment=rand-bogus", "'bogus' is not a rand setting"),
    ("aug.auto_augment=randx", "unknown policy"),
    ("detection.detector_kwargs={bogus: 1}", "MaskRCNN takes no argument 'bogus'"),
])
def test_strict_types_and_ranges(override, allowed):
    message = _error(overrides=[override])
    assert override.split("=")[0] in message and allowed in message, message


def test_booleans_stay_booleans_and_free_form_sections_take_any_value():
    cfg = load_config(overrides=["train.deterministic=true", "model.kwargs={flag: true}",
                                 "aug.auto_augment=augmix-m5-w3", "aug.auto_augment=null"])
    assert cfg.train.deterministic is True and cfg.model.kwargs == {"flag": True}
    assert cfg.aug.auto_augment is None


def test_a_malformed_section_is_reported_not_replaced_by_a_flag(tmp_path):
    for text, key in (("data: 5\n", "data = 5"), ("model: [1, 2]\n", "model = [1, 2]")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        message = _error(config=str(bad), flags={"data.path": ("d", "--data"),
                                                 "model.name": ("resnet18", "--model")})
        assert message.startswith(f"{key} (from config {bad}): must be a mapping"), message
    message = _error(overrides=["data=5"], flags={"data.path": ("d", "--data")})
    assert message.startswith("data = 5 (from --set data=5): must be a mapping")


def test_unreadable_config_files_are_one_line_errors(tmp_path):
    cases = {"syntax.yaml": (b"optim: {base_lr: [\n", "is not valid YAML: line 2, column 1"),
             "binary.yaml": (b"\x00\x01\x02\xff binary", "is not a YAML text file"),
             "base.yaml": (b"base: 5\n", "base = 5 (from config"),
             "top.yaml": (b"- 1\n- 2\n", "must be a mapping of sections, got list")}
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        assert expected in _error(config=str(tmp_path / name)), name
    assert "is not valid YAML (line 1, column 5" in _error(overrides=["optim.betas=[0.9"])
    assert "'' is not a config key" in _error(overrides=["=1"])
    with pytest.raises(UserError, match="its config is a str, not a mapping"):
        config_from_snapshot({"config": "hello"}, "run/last.pth")
