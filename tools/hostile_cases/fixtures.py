"""Tiny data, runs and hostile files the cases attack with (built once per harness run, by
the worker, with the attacked source tree).

Every fixture is a path placeholder: ``{data}`` is ``ROOT/data`` and so on. A fixture that
cannot be built (e.g. a command the attacked version lacks) is left out; cases naming it are
reported as n/a.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import struct
import traceback
import zlib
from pathlib import Path

from .argv import DET_TRAIN, LM_FINETUNE, LM_FINETUNE_TAIL, SEG_TRAIN, TRAIN, build, fill


class Evil:
    """Unpickling this runs ``touch MARKER``: a checkpoint that executes code when loaded
    unsafely. The harness fails any case after which a marker exists."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def png_bytes_with_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels (a decompression bomb
    for any reader that trusts it); the pixel data is a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _digit_images(n_per_class: int, classes: int = 2):
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = {c: [] for c in range(classes)}
    for image, target in zip(digits.images, digits.target):
        if target < classes and len(out[target]) < n_per_class:
            out[target].append(image / 16.0)  # float in [0, 1]
    return out


def _write_folder(root: Path, names=("zero", "one"), n_train=12, n_val=4, size=16,
                  sixteen_bit=False) -> None:
    import numpy as np
    from PIL import Image

    images = _digit_images(n_train + n_val, len(names))
    for c, name in enumerate(names):
        for i, image in enumerate(images[c]):
            split = "train" if i < n_train else "val"
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            if sixteen_bit:  # mode I;16 with values across 0..65535
                arr = (image * 65535).astype(np.uint16)
                pil = Image.fromarray(arr).resize((size, size), Image.NEAREST)
            else:
                arr = (image * 255).astype(np.uint8)
                pil = Image.fromarray(arr, mode="L").resize((size, size)).convert("RGB")
            pil.save(folder / f"{name}_{i:02d}.png")


def _bad_files(folder: Path, good: Path) -> None:
    data = good.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "garbage.png").write_bytes(random.Random(0).randbytes(2048))
    (folder / "empty.png").write_bytes(b"")
    (folder / "bomb.png").write_bytes(png_bytes_with_header(100000, 100000))


def _run_cli(argv: list[str]) -> None:
    from .worker import run_cli

    result = run_cli(argv, os.getcwd())
    if result["rc"] != 0:
        raise RuntimeError(f"fixture command failed ({result['rc']}): {' '.join(argv)}\n"
                           f"{result['stderr'][-3000:]}")


def _fill(argv: list[str], fx: dict) -> list[str]:
    return [fill(a, fx) for a in argv]


def build_all(root: Path, only: set | None = None) -> tuple[dict, dict]:
    """Every fixture under ``root``; returns (placeholders, {fixture: error})."""
    fx: dict = {"root": str(root), "markers": str(root / "markers")}
    errors: dict = {}
    (root / "markers").mkdir(parents=True, exist_ok=True)
    steps = [("images", _images), ("data", _data), ("digits", _digits), ("run", _run),
             ("ckpt", _checkpoints), ("coco", _coco), ("ade", _ade), ("det_run", _det_run),
             ("seg_run", _seg_run), ("lm", _lm), ("lm_adapter", _lm_adapter)]
    for name, step in steps:
        if only is not None and name not in only:
            continue
        try:
            step(root, fx)
        except Exception:  # noqa: BLE001 - reported, the cases needing it become n/a
            errors[name] = traceback.format_exc()[-2000:]
    return fx, errors


def _images(root: Path, fx: dict) -> None:
    import numpy as np
    from PIL import Image

    folder = root / "img"
    folder.mkdir(parents=True, exist_ok=True)
    ok = folder / "ok.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(ok)
    _bad_files(folder, ok)
    Image.fromarray(np.full((32, 32), 20000, dtype=np.uint16)).save(folder / "16bit.png")
    fx.update(img_ok=str(ok), img_truncated=str(folder / "truncated.png"),
              img_garbage=str(folder / "garbage.png"), img_empty=str(folder / "empty.png"),
              img_bomb=str(folder / "bomb.png"), img_16bit=str(folder / "16bit.png"))


def _data(root: Path, fx: dict) -> None:
    data = root / "data"
    _write_folder(data)
    fx["data"] = str(data)
    noval = root / "data_noval"
    shutil.copytree(data / "train", noval / "train")
    fx["data_noval"] = str(noval)
    bad = root / "bad_data"
    shutil.copytree(data, bad)
    for split in ("train", "val"):
        folder = bad / split / "zero"
        _bad_files(folder, next(folder.glob("*.png")))
    fx["bad_data"] = str(bad)
    loop = root / "loop_data"
    shutil.copytree(data, loop)
    for split in ("train", "val"):
        os.symlink("..", loop / split / "zero" / "loop")
    fx["loop_data"] = str(loop)
    _write_folder(root / "data16", sixteen_bit=True)
    fx["data16"] = str(root / "data16")
    _write_folder(root / "other_data", names=("alpha", "beta"))
    fx["other_data"] = str(root / "other_data")
    allbad = root / "allbad_data" / "zero"
    allbad.mkdir(parents=True)
    _bad_files(allbad, Path(fx["img_ok"]))
    (allbad / "ok.png").unlink(missing_ok=True)
    fx["allbad_data"] = str(root / "allbad_data")


def _digits(root: Path, fx: dict) -> None:
    try:
        from grootvl.data import prepare_digits_folder
    except ImportError:
        from grootvl.data.digits import prepare_digits_folder
    prepare_digits_folder(root / "digits", size=32)
    fx["digits"] = str(root / "digits")


def _run(root: Path, fx: dict) -> None:
    out = root / "run"
    _run_cli(_fill(build(TRAIN, {"--epochs": "2", "--output": str(out)}), fx))
    fx["run"] = str(out)


def _checkpoints(root: Path, fx: dict) -> None:
    import torch

    folder = root / "ckpt"
    folder.mkdir(parents=True, exist_ok=True)
    last = Path(fx["run"]) / "last.pth"
    data = last.read_bytes()
    markers = Path(fx["markers"])
    (folder / "zero.pth").write_bytes(b"")
    (folder / "garbage.pth").write_bytes(random.Random(1).randbytes(4096))
    (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
    (folder / "corrupt.safetensors").write_bytes(random.Random(2).randbytes(4096))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ckpt["model"].items()}, folder / "whole.safetensors")
    whole = (folder / "whole.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(whole[: len(whole) // 2])
    torch.save({"model": Evil(markers / "evil.pth")}, folder / "evil.pth")
    (folder / "evil_raw.pth").write_bytes(pickle.dumps(Evil(markers / "evil_raw.pth"), protocol=2))
    torch.save({"model": ckpt["model"], "extra": Evil(markers / "evil_in_dict.pth")},
               folder / "evil_in_dict.pth")
    variants = {
        "config_str": lambda c: c.update(config="hello"),
        "config_list": lambda c: c.update(config=[1, 2]),
        "img_size_huge": lambda c: c["config"]["data"].update(img_size=100000),
        "depths_huge": lambda c: c["config"]["model"].update(
            kwargs={"channels": 65536, "depths": [64, 64, 64, 64]}),
        "model_not_dict": lambda c: c.update(model=5),
        "classes_str": lambda c: c.update(classes="zo"),
        "nan": _nan_weights,
    }
    for name, edit in variants.items():
        copy = torch.load(last, map_location="cpu", weights_only=True)
        edit(copy)
        torch.save(copy, folder / f"{name}.pth")
    torch.save([1, 2, 3], folder / "list.pth")
    torch.save(torch.zeros(3), folder / "tensor.pth")
    fx["ckpt"] = str(folder)


def _nan_weights(ckpt: dict) -> None:
    for key in ("model", "model_ema"):
        for tensor in (ckpt.get(key) or {}).values():
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))


def _synthetic():
    try:
        from grootvl.dense import make_ade_shapes, make_coco_shapes
    except ImportError:
        from grootvl.data import make_ade_shapes, make_coco_shapes
    return make_coco_shapes, make_ade_shapes


def _coco(root: Path, fx: dict) -> None:
    make_coco, _ = _synthetic()
    coco = root / "coco"
    make_coco(coco, n_images=4, size=64, split="train2017", seed=0, max_shapes=2)
    make_coco(coco, n_images=2, size=64, split="val2017", seed=1, max_shapes=2)
    fx["coco"] = str(coco)
    bad = root / "coco_bad"
    shutil.copytree(coco, bad)
    images = sorted((bad / "train2017").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:100])
    images[1].write_bytes(png_bytes_with_header(100000, 100000))
    fx["coco_bad"] = str(bad)


def _ade(root: Path, fx: dict) -> None:
    _, make_ade = _synthetic()
    ade = root / "ade"
    make_ade(ade, n_train=4, n_val=2, size=64, seed=0)
    fx["ade"] = str(ade)
    bad = root / "ade_bad"
    shutil.copytree(ade, bad)
    image = sorted((bad / "images" / "training").iterdir())[0]
    image.write_bytes(image.read_bytes()[:100])
    label = sorted((bad / "annotations" / "training").iterdir())[1]
    label.write_bytes(b"not a png")
    fx["ade_bad"] = str(bad)


def _det_run(root: Path, fx: dict) -> None:
    _run_cli(_fill(build(DET_TRAIN, {"--output": str(root / "det_run")}), fx))
    fx["det_run"] = str(root / "det_run")


def _seg_run(root: Path, fx: dict) -> None:
    _run_cli(_fill(build(SEG_TRAIN, {"--output": str(root / "seg_run")}), fx))
    fx["seg_run"] = str(root / "seg_run")


def _lm(root: Path, fx: dict) -> None:
    import torch
    from transformers import MambaConfig, MambaForCausalLM

    from grootvl.grootl import byte_tokenizer
    from grootvl.grootl.tokenizer import BYTE_VOCAB_SIZE

    path = root / "lm_model"
    torch.manual_seed(0)
    config = MambaConfig(vocab_size=BYTE_VOCAB_SIZE, hidden_size=32, num_hidden_layers=1,
                         state_size=4, bos_token_id=256, eos_token_id=256, pad_token_id=257)
    MambaForCausalLM(config).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    fx["lm_model"] = str(path)
    examples = [{"instruction": f"Name colour {i}.", "input": "", "output": "red"} for i in range(6)]
    (root / "lm_data.json").write_text(json.dumps(examples))
    fx["lm_data"] = str(root / "lm_data.json")
    bad = root / "lm_bad"
    bad.mkdir()
    (bad / "empty.json").write_text("")
    (bad / "garbage.json").write_bytes(random.Random(3).randbytes(512))
    (bad / "dict.json").write_text(json.dumps({"a": 1}))
    (bad / "ints.json").write_text(json.dumps([1, 2]))
    (bad / "nofields.json").write_text(json.dumps([{"x": 1}]))
    fx["lm_bad"] = str(bad)


def _lm_adapter(root: Path, fx: dict) -> None:
    out = root / "lm_adapter"
    _run_cli(_fill(build(LM_FINETUNE, {"--output-dir": str(out)}, tail=LM_FINETUNE_TAIL), fx))
    fx["lm_adapter"] = str(out)
