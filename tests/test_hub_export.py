"""grootvl.models.hub / `grootvl export`: checkpoints to timm's Hub layout and back."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import grootvl  # noqa: F401  registers grootv_*
from grootvl.cli.main import main
from grootvl.models.hub import export_for_hub, grootv_kwargs_from_state

TINY = dict(channels=8, depths=(1, 2))


class CfgNode(dict):
    """Stands in for the yacs config pickled into the original release files."""


def _model(seed, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model("grootv_tiny", **{**TINY, "num_classes": 5, **kwargs}).eval()


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _reload(folder):
    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    model, ema = _model(0), _model(1)
    fake = types.ModuleType("fake_yacs_release")
    CfgNode.__module__ = fake.__name__
    fake.CfgNode = CfgNode
    sys.modules[fake.__name__] = fake
    torch.save({"model": model.state_dict(), "model_ema": ema.state_dict(), "epoch": 3,
                "optimizer": {}, "config": CfgNode(MODEL=CfgNode(TYPE="grootv"))},
               root / "release.pth")
    del sys.modules[fake.__name__]  # reading the release must not need the config's class
    save_file(model.state_dict(), str(root / "weights.safetensors"))
    stage = _model(2, tree_sharing="stage")
    cfg = {"model": {"name": "grootv_tiny", "kwargs": {**TINY, "tree_sharing": "stage",
                                                       "scan_impl": "numba"}},
           "data": {"img_size": 32, "in_chans": 3, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                    "crop_pct": 1.0, "interpolation": "bicubic"}}
    torch.save({"model": stage.state_dict(), "model_ema": None, "epoch": 1, "arch": "grootv_tiny",
                "classes": ["a", "b", "c", "d", "e"], "config": cfg}, root / "train.pth")
    nan = {k: v.clone() for k, v in model.state_dict().items()}
    nan["head.weight"][0, 0] = float("nan")
    torch.save({"model": nan}, root / "nan.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, root / "other.pth")
    torch.save({"model": stage.state_dict(),
                "config": {**cfg, "data": {**cfg["data"], "img_size": "abc"}}}, root / "damaged.pth")
    return root, model, ema, stage


def test_release_checkpoint_round_trip_with_ema_choice(files, tmp_path):
    root, model, ema, _ = files
    x = torch.randn(2, 3, 32, 32)
    for use_ema, want in ((False, model), (True, ema)):
        out = tmp_path / f"ema{use_ema}"
        export_for_hub(root / "release.pth", out, use_ema=use_ema)
        assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
        loaded = _reload(out)
        assert _same_weights(loaded, want)
        with torch.inference_mode():
            assert torch.equal(loaded(x), want(x))
    config = json.loads((tmp_path / "emaFalse" / "config.json").read_text())
    assert config["architecture"] == "grootv_tiny" and config["num_classes"] == 5
    assert config["model_args"]["channels"] == 8 and config["model_args"]["depths"] == [1, 2]
    assert "pretrained_cfg" in config and config["pretrained_cfg"]["first_conv"] == "patch_embed.conv1"
    card = (tmp_path / "emaTrue" / "README.md").read_text()
    assert "library_name: timm" in card and "import grootvl" in card and "The EMA weights" in card


def test_train_checkpoint_keeps_options_labels_and_preprocessing(files, tmp_path):
    root, _, _, stage = files
    export_for_hub(root / "train.pth", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_args"]["tree_sharing"] == "stage"
    assert "scan_impl" not in config["model_args"]  # a per-machine choice, not the architecture
    assert config["label_names"] == ["a", "b", "c", "d", "e"]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5]
    loaded = _reload(tmp_path / "out")
    assert loaded.tree_sharing == "stage" and _same_weights(loaded, stage)
    data = timm.data.resolve_data_config(model=loaded)
    assert data["input_size"] == (3, 32, 32) and data["crop_pct"] == 1.0


def test_safetensors_with_set_and_new_classifier(files, tmp_path):
    root, model, _, _ = files
    built = export_for_hub(root / "weights.safetensors", tmp_path / "out", num_classes=3,
                           model_kwargs={"tree_cost": "l2"})
    loaded = _reload(tmp_path / "out")
    assert loaded.num_classes == 3 and loaded.head.weight.shape == (3, 16 * 3 // 2)
    assert loaded.levels[0].blocks[0].TreeSSM.tree_cost == "l2"
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    got = loaded.state_dict()
    assert all(torch.equal(got[k], v) for k, v in body.items())
    assert torch.equal(got["head.weight"], built.model.state_dict()["head.weight"])
    assert "new, untrained classifier" in (tmp_path / "out" / "README.md").read_text()


def test_architecture_is_read_off_the_weights():
    model = timm.create_model("grootv_tiny", channels=8, depths=(1, 1, 3), num_classes=0,
                              in_chans=1, head_scale=2.0, mlp_ratio=3.0)
    assert grootv_kwargs_from_state(model.state_dict()) == dict(
        channels=8, depths=(1, 1, 3), in_chans=1, num_classes=0, head_scale=2.0, mlp_ratio=3.0)
    with pytest.raises(ValueError, match="not a GrootV state dict"):
        grootv_kwargs_from_state({"fc.weight": torch.zeros(2, 2)})


def _cli(*argv):
    return main(["export", *argv])


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "missing.pth"], "checkpoint missing.pth: no such file"),
    (["--checkpoint", "{root}"], "is a folder"),
    (["--checkpoint", "{root}/train.pth", "--use-ema"], "has no EMA weights"),
    (["--checkpoint", "{root}/release.pth", "--set", "channels=16"], "does not fit grootv_tiny"),
    (["--checkpoint", "{root}/release.pth", "--model", "resnet50"], "not a GrootV architecture"),
    (["--checkpoint", "{root}/release.pth", "--model", "bogus"], "not a timm model name"),
    (["--checkpoint", "{root}/release.pth", "--num-classes", "-2"],
     "num_classes = -2 (from --num-classes)"),
    (["--checkpoint", "{root}/release.pth", "--set", "tree_sharing=layer"], "tree_sharing must be"),
    (["--checkpoint", "{root}/release.pth", "--set", "bogus=1"], "bogus"),
    (["--checkpoint", "{root}/release.pth", "--set", "channels"], "expected KEY=VALUE"),
    (["--checkpoint", "{root}/release.pth", "--set", "depths=[1, 2"], "not valid YAML"),
    (["--checkpoint", "{root}/nan.pth"], "NaN or infinite"),
    (["--checkpoint", "{root}/other.pth"], "holds no GrootV weights"),
    (["--checkpoint", "{root}/damaged.pth"], "data.img_size is 'abc'"),
])
def test_cli_bad_input_is_one_line(files, tmp_path, capsys, argv, message):
    root = files[0]
    argv = [a.format(root=root) for a in argv]
    assert _cli(*argv, "--output", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("grootvl export: error:") and message in err and "\n" not in err


def test_cli_refuses_a_non_empty_folder_unless_overwrite(files, tmp_path, capsys):
    root = files[0]
    (tmp_path / "notes.txt").write_text("keep")
    assert _cli("--checkpoint", str(root / "release.pth"), "--output", str(tmp_path)) == 2
    assert f"--output {tmp_path} is not empty" in capsys.readouterr().err
    assert _cli("--checkpoint", str(root / "release.pth"), "--output", str(tmp_path / "notes.txt")) == 2
    assert "is a file" in capsys.readouterr().err
    assert _cli("--checkpoint", str(root / "release.pth"), "--output", str(tmp_path), "--overwrite") == 0
    assert (tmp_path / "model.safetensors").is_file()


def test_push_to_hub_uploads_through_timm_offline(files, tmp_path, monkeypatch, capsys):
    """Everything up to the network: timm's push_to_hf_hub with huggingface_hub's HfApi faked."""
    root, _, ema, _ = files
    sent = {}

    class FakeApi:
        def __init__(self, token=None, **kwargs):
            sent["token"] = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            sent.update(repo_id=repo_id, private=private)
            return types.SimpleNamespace(repo_id=repo_id)

        def file_exists(self, repo_id, filename, revision=None):
            return False

        def upload_folder(self, repo_id, folder_path, **kwargs):
            folder = Path(folder_path)
            sent["files"] = sorted(p.name for p in folder.iterdir())
            sent["config"] = json.loads((folder / "config.json").read_text())
            sent["readme"] = (folder / "README.md").read_text()
            from safetensors.torch import load_file
            sent["weights"] = load_file(str(folder / "model.safetensors"))
            return types.SimpleNamespace(commit_url=f"https://hub.invalid/{repo_id}/commit/1")

    monkeypatch.setattr("timm.models._hub.HfApi", FakeApi)
    code = _cli("--checkpoint", str(root / "release.pth"), "--output", str(tmp_path / "out"),
                "--use-ema", "--push-to-hub", "someone/grootv-test", "--private")
    assert code == 0
    assert sent["repo_id"] == "someone/grootv-test" and sent["private"] is True
    assert sent["files"] == ["README.md", "config.json", "model.safetensors"]
    assert sent["config"] == json.loads((tmp_path / "out" / "config.json").read_text())
    assert all(torch.equal(sent["weights"][k], v) for k, v in ema.state_dict().items())
    assert "# Model card for grootv-test" in sent["readme"]
    assert 'timm.create_model("hf-hub:someone/grootv-test"' in sent["readme"]
    assert "pushed to https://hub.invalid/someone/grootv-test/commit/1" in capsys.readouterr().out
