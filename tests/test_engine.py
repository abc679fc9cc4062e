"""Unit tests of the reusable training machinery (grootvl.engine), the run config and the data
folder checks."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from grootvl.data import ImageFolderDataset
from grootvl.engine import atomic_save
from grootvl.engine.amp import resolve_amp
from grootvl.engine.config import parse_override
from grootvl.engine.metrics import MetricSums
from grootvl.engine.optim import build_optimizer, scaled_lrs
from grootvl.engine.progress import JsonlLogger, Progress, read_jsonl
from grootvl.engine.seeding import get_rng_state, seed_everything, set_rng_state
from grootvl.engine.snapshots import SnapshotManager
from grootvl.errors import UserError
from grootvl.tasks import load_config
from grootvl.tasks.metrics import topk_correct


# ------------------------------------------------------------------------- checkpoints

class _ExplodesWhenPickled:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.pth"
    atomic_save({"epoch": 1}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"epoch": 2, "bad": _ExplodesWhenPickled()}, path)
    assert torch.load(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temp file left


def test_find_resume(tmp_path):
    mgr = SnapshotManager(tmp_path / "run")
    assert mgr.find_resume(None) is None
    assert mgr.find_resume("auto") is None  # fresh run
    atomic_save({"epoch": 0}, mgr.last_path)
    assert mgr.find_resume("auto") == mgr.last_path
    with pytest.raises(UserError, match="no such checkpoint"):
        mgr.find_resume(str(tmp_path / "missing.pth"))


def test_rng_state_roundtrip():
    seed_everything(3)
    state = pickle.loads(pickle.dumps(get_rng_state()))
    a = (np.random.rand(), torch.rand(2))
    set_rng_state(state)
    b = (np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


# ------------------------------------------------------------------------------ config

def _schema():
    return load_config("grootv_tiny")


def test_packaged_configs_reproduce_the_imagenet_recipe():
    cfg = _schema()
    assert cfg.model.name == "grootv_tiny" and cfg.model.drop_path_rate == 0.1
    assert (cfg.optim.name, cfg.optim.base_lr, cfg.optim.lr_base_batch) == ("adamw", 5e-4, 512)
    assert cfg.optim.weight_decay == 0.05 and cfg.optim.clip_grad == 5.0
    assert (cfg.sched.name, cfg.sched.epochs, cfg.sched.warmup_epochs,
            cfg.sched.min_lr) == ("cosine", 300, 20, 5e-6)
    aug = cfg.aug
    assert (aug.auto_augment, aug.reprob, aug.mixup, aug.cutmix, aug.label_smoothing) == (
        "rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0, 0.1)
    assert cfg.ema.enabled and cfg.ema.decay == 0.9999
    assert cfg.data.interpolation == "bicubic" and cfg.data.crop_pct == 0.875
    for name, model, dpr in (("grootv_small", "grootv_small", 0.3), ("grootv_base", "grootv_base", 0.5)):
        other = load_config(name)
        assert (other.model.name, other.model.drop_path_rate) == (model, dpr)
        assert other.optim == cfg.optim and other.aug == cfg.aug


def test_overrides_and_explicit_flags():
    cfg = load_config("grootv_small", ["optim.base_lr=1e-3", "aug.scale=[0.5, 1.0]",
                                       "model.kwargs.tree_sharing=stage"],
                      {"train.batch_size": (32, "--batch-size"), "sched.epochs": (None, "--epochs")})
    assert cfg.optim.base_lr == 1e-3 and list(cfg.aug.scale) == [0.5, 1.0]
    assert cfg.model.kwargs == {"tree_sharing": "stage"}
    assert cfg.train.batch_size == 32 and cfg.sched.epochs == 300
    assert parse_override("optim.base_lr=5e-4") == ("optim.base_lr", 5e-4)  # YAML 1.1 quirk


@pytest.mark.parametrize("override, match", [
    ("optim.base_lrr=1", "did you mean optim.base_lr"),
    ("optim.base_lr", "expected KEY=VALUE"),
])
def test_bad_overrides(override, match):
    with pytest.raises(UserError, match=match):
        load_config(None, [override])


def test_missing_config_lists_packaged_ones():
    with pytest.raises(UserError, match="grootv_small"):
        load_config("grootv_huge")


def test_lr_scales_linearly_with_total_batch():
    cfg = load_config(None, ["train.batch_size=128", "optim.accum_steps=2"])
    lrs = scaled_lrs(cfg, world_size=8)  # total batch 2048 = 4 x 512
    assert lrs["total_batch"] == 2048
    assert lrs["lr"] == pytest.approx(2e-3) and lrs["min_lr"] == pytest.approx(2e-5)


def _tiny_model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5),
                               torch.nn.Linear(5, 3)).to(dtype)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_update_is_used_where_torch_has_it_and_takes_the_same_steps(name):
    cfg = load_config(None, [f"optim.name={name}"])
    models = {fused: _tiny_model() for fused in (None, False)}
    optimizers = {fused: build_optimizer(model, cfg.optim.model_copy(update={"fused": fused}), 0.1)
                  for fused, model in models.items()}
    assert optimizers[None].defaults["fused"] is True
    assert not optimizers[False].defaults.get("fused")
    x = torch.randn(16, 6)
    for _ in range(3):
        for fused, model in models.items():
            model(x).square().mean().backward()
            optimizers[fused].step()
            optimizers[fused].zero_grad()
    for a, b, initial in zip(models[None].parameters(), models[False].parameters(),
                             _tiny_model().parameters()):
        assert not torch.equal(a, initial)  # the steps moved it
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_update_off_where_unsupported_and_refused_when_asked_for():
    cfg = load_config(None, ["optim.name=lamb"])
    assert not build_optimizer(_tiny_model(), cfg.optim, 0.1).defaults.get("fused")
    with pytest.raises(UserError, match="'lamb' has no fused implementation.*optim.fused"):
        build_optimizer(_tiny_model(), cfg.optim.model_copy(update={"fused": True}), 0.1)
    model = _tiny_model(torch.float64)
    model[0].weight.data = model[0].weight.data.to(torch.complex128)
    with pytest.raises(UserError, match=r"parameter 0\.weight is torch\.complex128"):
        build_optimizer(model, load_config(None, ["optim.fused=true"]).optim, 0.1)


# ------------------------------------------------------------------------ amp, metrics

def test_resolve_amp_on_cpu():
    cpu = torch.device("cpu")
    assert not resolve_amp("auto", cpu).enabled
    bf16 = resolve_amp("bf16", cpu)
    assert bf16.dtype is torch.bfloat16 and not bf16.needs_scaler
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        resolve_amp("fp16", cpu)


def test_topk_and_metric_sums():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    assert topk_correct(logits, torch.tensor([1, 1, 0]), (1, 2, 5)) == [1, 2, 3]
    sums = MetricSums()
    sums.add(3, loss=1.0)
    sums.add(1, loss=5.0)
    assert sums.reduced(torch.device("cpu")) == {"loss": 2.0}


def test_progress_log_lines_and_jsonl(tmp_path):
    stream = io.StringIO()
    progress = Progress(4, "epoch 1/1", mode="log", log_every=2, stream=stream)
    for _ in range(4):
        progress.update(8, loss=0.5)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "[4/4]" in lines[1] and "img/s" in lines[1] and "eta" in lines[1]
    logger = JsonlLogger(tmp_path / "log.jsonl")
    logger.log({"event": "epoch", "loss": torch.tensor(0.25)})
    assert read_jsonl(tmp_path / "log.jsonl")[0]["loss"] == 0.25


# -------------------------------------------------------------------------------- data

def _png(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "noimg" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="no image files"):
        ImageFolderDataset(tmp_path / "noimg")
    _png(tmp_path / "val" / "cat" / "a.png")
    with pytest.raises(UserError, match="lacks 1 class folder.*dog"):
        ImageFolderDataset(tmp_path / "val", classes=["cat", "dog"])


def test_unreadable_image_is_skipped_and_counted(tmp_path, caplog):
    _png(tmp_path / "a" / "0.png", 10)
    (tmp_path / "a" / "1.png").write_bytes(b"not a png")
    _png(tmp_path / "b" / "2.png", 200)
    ds = ImageFolderDataset(tmp_path)
    img, target, skipped = ds[1]  # the broken file: replaced by the next readable sample
    assert (target, skipped) == (1, 1) and img.getpixel((0, 0))[0] == 200
    assert "skipping unreadable image" in caplog.text and "1.png" in caplog.text
    assert ds[0][1:] == (0, 0)


def test_randaugment_posterize_at_full_magnitude_does_not_crash():
    """rand-m9-mstd0.5 samples magnitude 10 ~2% of the time -> posterize to 0 bits, which
    Pillow >= 13 rejects; the ImageNet transform must survive it (black image, as before)."""
    from grootvl.data import build_transform

    cfg = _schema()
    transform = build_transform(cfg.data.model_copy(update={"img_size": 32}), cfg.aug,
                                is_training=True)
    ops = [op for t in transform.transforms for op in getattr(t, "ops", [])
           if op.name == "PosterizeIncreasing"]
    assert ops
    op = ops[0]
    op.magnitude, op.magnitude_std, op.prob = 10, 0, 1.0
    assert op(Image.new("RGB", (8, 8), (200, 100, 50))).getpixel((0, 0)) == (0, 0, 0)


def test_cpu_threads_is_scoped():
    from grootvl.engine.distributed import cpu_threads

    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(UserError, match="train.threads"):
        with cpu_threads(-2):
            pass


# ------------------------------------------------------------------- model.init_checkpoint

def _init_cfg(path):
    return load_config(None, ["model.name=test_efficientnet", f"model.init_checkpoint={path}"]).model


def test_init_checkpoint_with_another_class_count_gets_a_new_classifier(tmp_path, caplog):
    import timm

    from grootvl.tasks.classification import build_classifier

    release = timm.create_model("test_efficientnet", num_classes=1000).state_dict()
    torch.save({"model": release, "epoch": 299}, tmp_path / "release.pth")  # release layout
    with caplog.at_level("INFO"):
        model = build_classifier(_init_cfg(tmp_path / "release.pth"), num_classes=10)
    state = model.state_dict()
    assert state["classifier.weight"].shape[0] == 10
    assert all(torch.equal(state[k], v) for k, v in release.items() if not k.startswith("classifier."))
    assert "dropped classifier.weight, classifier.bias" in caplog.text and "10 classes" in caplog.text

    caplog.clear()  # a classifier that fits is loaded, silently
    model = build_classifier(_init_cfg(tmp_path / "release.pth"), num_classes=1000)
    assert torch.equal(model.state_dict()["classifier.weight"], release["classifier.weight"])
    assert "dropped" not in caplog.text

    del release["conv_stem.weight"]  # everything but the classifier stays strict
    torch.save({"model": release}, tmp_path / "broken.pth")
    with pytest.raises(UserError, match="conv_stem.weight"):
        build_classifier(_init_cfg(tmp_path / "broken.pth"), num_classes=10)
