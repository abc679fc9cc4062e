"""``grootvl demo``: a small GrootV trained on scikit-learn's digits, with a short report.

Prepares the digits as an image folder (no download), trains with the classification task
and the same engine as ``grootvl train``, then writes ``metrics.json`` (test accuracy,
per-epoch loss/accuracy, wall time), ``training_curve.png`` and ``tree.png`` (the spanning
tree GrootV builds over a test digit and the propagation weights from one pixel).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..data import ImageFolderDataset, build_transform, prepare_digits_folder
from ..engine.loop import LOG_FILE, run_training
from ..engine.progress import read_jsonl
from ..models.factory import create_model
from ..models.weights import load_weights
from ..visualize import plot_training_curve, render_tree_figure
from .classification import ClassificationTask
from .config import RunConfig

__all__ = ["run_demo"]


def run_demo(cfg: RunConfig, output: str | Path, resume: str | None = None,
             crash_at_step: int | None = None, overwrite: bool = False) -> dict:
    """Prepare the digits in ``cfg.data.path``, train ``cfg`` into ``output``, report.

    ``resume`` and ``overwrite`` as in :func:`grootvl.engine.run_training`. Returns the
    ``metrics.json`` content.
    """
    start = time.perf_counter()
    output = Path(output)
    prepare_digits_folder(cfg.data.path, size=cfg.data.img_size)
    summary = run_training(ClassificationTask(cfg), cfg, output, resume=resume,
                           crash_at_step=crash_at_step, overwrite=overwrite)
    epochs = [r for r in read_jsonl(output / LOG_FILE) if r.get("event") == "epoch"]
    curve = output / "training_curve.png"
    plot_training_curve(epochs, curve)
    tree_png = output / "tree.png"
    _tree_figure(cfg, output / "last.pth", tree_png)
    last = epochs[-1]
    metrics = {
        "test_accuracy": last.get("val_top1"), "test_loss": last.get("val_loss"),
        "best_test_accuracy": summary.get("best_top1"), "test_images": last.get("val_count"),
        "model": cfg.model.name, "model_kwargs": cfg.model.kwargs,
        "epochs": [{k: r.get(k) for k in ("epoch", "train_loss", "val_loss", "val_top1", "val_top5",
                                          "lr", "epoch_time_s")} for r in epochs],
        "train_time_s": summary.get("run_time_s"), "wall_time_s": round(time.perf_counter() - start, 2),
        "checkpoint": str(output / "last.pth"), "training_curve": str(curve),
        "tree_figure": str(tree_png),
    }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _tree_figure(cfg: RunConfig, checkpoint: Path, path: Path) -> None:
    """tree.png for the first test digit, with the trained weights."""
    data = cfg.data
    ds = ImageFolderDataset(Path(data.path) / data.val_split,
                            transform=build_transform(data, cfg.aug, is_training=False))
    model = create_model(cfg.model.name, len(ds.classes), data.in_chans, **cfg.model.kwargs)
    load_weights(model, checkpoint, model_name=cfg.model.name)
    image, target, _ = ds[0]
    render_tree_figure(model, image, ds.load(ds.samples[0][0]), path, stage=0, block=0,
                       title=f"test digit '{ds.classes[target]}'")
