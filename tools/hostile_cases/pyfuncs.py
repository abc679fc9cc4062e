"""Worker-side library attacks (run under the attacked source tree): the tree builders,
model constructors, GrootL's ``context_length``, checkpoint readers and image readers.

Each is a ``py`` case: it calls the library; an exception it lets through is classified by
the controller, ``Silent`` marks a wrong result, a return value is a note.
"""
from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

from .worker import Silent, Unavailable


def _import(module: str, *names: str):
    """Attributes of an attacked module, or Unavailable when this version lacks them."""
    import importlib

    try:
        mod = importlib.import_module(module)
        return [getattr(mod, n) for n in names] if names else mod
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"{module}: {exc}") from None


# --------------------------------------------------------------------------- tree builders

def grid_tree_bad(fx, case_dir, impl: str, variant: str):
    import torch

    (grid_tree,) = _import("grootvl.ops", "grid_tree")
    shape = {"H=0": (1, 4, 0, 5), "W=0": (1, 4, 3, 0), "H=W=0": (1, 4, 0, 0),
             "B=0": (0, 4, 3, 5), "C=0": (1, 0, 3, 5), "3d": (4, 3, 5),
             "H=W=1": (1, 4, 1, 1)}.get(variant, (1, 4, 3, 5))
    guide = torch.rand(shape, generator=torch.Generator().manual_seed(8))
    kwargs = {"impl": impl}
    if variant == "int":
        guide = (guide * 10).long()
    elif variant == "nan":
        guide[0, 0, 1, 1] = float("nan")
    elif variant == "inf":
        guide[0, 0, 1, 1] = float("inf")
    elif variant.startswith("root="):
        kwargs["root"] = {"root=-1": -1, "root=L": 15, "root=2.5": 2.5, "root=True": True}[variant]
    elif variant == "cost=bogus":
        kwargs["cost"] = "bogus"
    elif variant == "impl=bogus":
        kwargs["impl"] = "bogus"
    tree = grid_tree(guide, **kwargs)
    return f"tree with order shape {tuple(tree.order.shape)}"


def grid_chain_bad(fx, case_dir, variant: str):
    (grid_chain,) = _import("grootvl.ops", "grid_chain")
    args = {"height": 3, "width": 4, "batch": 1}
    kwargs = {}
    edits = {"H=0": ("height", 0), "W=0": ("width", 0), "H=2.5": ("height", 2.5),
             "batch=-1": ("batch", -1), "batch=1.5": ("batch", 1.5)}
    if variant in edits:
        key, value = edits[variant]
        args[key] = value
    elif variant == "major=bogus":
        kwargs["major"] = "bogus"
    elif variant == "root=99":
        kwargs["root"] = 99
    tree = grid_chain(args["height"], args["width"], args["batch"], **kwargs)
    return f"tree with order shape {tuple(tree.order.shape)}"


def random_grid_tree_bad(fx, case_dir, variant: str):
    (random_grid_tree,) = _import("grootvl.ops", "random_grid_tree")
    args = {"batch": 1, "height": 3, "width": 4}
    kwargs = {}
    if variant == "batch=-1":
        args["batch"] = -1
    elif variant == "H=0":
        args["height"] = 0
    else:
        kwargs["root"] = 99
    tree = random_grid_tree(args["batch"], args["height"], args["width"], **kwargs)
    return f"tree with order shape {tuple(tree.order.shape)}"


def bfs_tree_bad(fx, case_dir, impl: str, variant: str):
    import torch

    (bfs_tree,) = _import("grootvl.ops", "bfs_tree")
    chain = [[0, 1], [1, 2], [2, 3], [3, 4]]
    edges = {"cycle": [[0, 1], [1, 2], [2, 0], [3, 4]],
             "out-of-range": [[0, 1], [1, 2], [2, 3], [3, 9]],
             "negative": [[0, 1], [1, 2], [2, 3], [3, -1]],
             "duplicate": [[0, 1], [0, 1], [1, 2], [2, 3]], "shape": chain[:3]}.get(variant, chain)
    tensor = torch.tensor([edges]).reshape(1, -1, 2)
    num_vertices, root = 5, 0
    if variant == "float":
        tensor = tensor.float()
    elif variant == "V=0":
        tensor, num_vertices = torch.zeros(1, 0, 2, dtype=torch.long), 0
    elif variant == "root=V":
        root = 5
    tree = bfs_tree(tensor, num_vertices, root=root, impl=impl)
    return f"tree with order shape {tuple(tree.order.shape)}"


def mst_bad(fx, case_dir, impl: str, variant: str):
    import torch

    (mst,) = _import("grootvl.ops", "minimum_spanning_tree")
    edges = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4], [0, 4], [1, 3]])
    costs = torch.rand(1, 6, generator=torch.Generator().manual_seed(9))
    num_vertices = 5
    if variant == "nan-costs":
        costs[0, 2] = float("nan")
    elif variant == "cost-shape":
        costs = torch.rand(1, 7)
    elif variant == "out-of-range":
        edges = edges.clone()
        edges[5, 1] = 99
    elif variant == "disconnected":
        edges = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 2], [1, 0], [2, 1]])
    elif variant == "V=0":
        num_vertices = 0
    out = mst(edges, costs, num_vertices, impl=impl)
    return f"tree edges {out.tolist()}"


def text_tree_bad(fx, case_dir, variant: str):
    import torch

    (text_tree,) = _import("grootvl.ops", "text_tree")
    features = {"L=0": torch.rand(1, 0, 4), "2d": torch.rand(4, 4),
                "int": torch.ones(1, 4, 4, dtype=torch.long)}[variant]
    tree = text_tree(features, 0)
    return f"tree with order shape {tuple(tree.order.shape)}"


# ----------------------------------------------------------------------------------- models

def _grootv(**overrides):
    (GrootV,) = _import("grootvl", "GrootV")
    kwargs = {"channels": 8, "depths": (1, 1, 1, 1), "num_classes": 2}
    kwargs.update(overrides)
    return GrootV(**kwargs)


def grootv_ctor(fx, case_dir, overrides: dict):
    import torch

    model = _grootv(**overrides)
    y = model(torch.rand(2, model.in_chans if isinstance(model.in_chans, int) else 3, 32, 32))
    if not torch.isfinite(y).all():
        raise Silent(f"GrootV({overrides}) computes non-finite outputs")
    return f"constructed; output {tuple(y.shape)}"


def tree_ssm_ctor(fx, case_dir, overrides: dict):
    (TreeSSM,) = _import("grootvl.layers", "TreeSSM")
    layer = TreeSSM(**{"d_model": 16, **overrides})
    return f"constructed {type(layer).__name__}"


def grootv_forward_bad(fx, case_dir, variant: str):
    import torch

    model = _grootv().eval()
    x = {"H=0": torch.rand(1, 3, 0, 32), "3d": torch.rand(3, 32, 32),
         "channels": torch.rand(1, 4, 32, 32),
         "int": torch.ones(1, 3, 32, 32, dtype=torch.long)}[variant]
    with torch.no_grad():
        y = model(x)
    return f"output shape {tuple(y.shape)}"


# ------------------------------------------------------------------------------------ GrootL

@lru_cache(maxsize=1)
def _grootl_model():
    import torch

    transformers = _import("transformers")
    (enable,) = _import("grootvl.grootl", "enable_tree_scanning")
    torch.manual_seed(0)
    config = transformers.MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                      state_size=4, pad_token_id=0, eos_token_id=1)
    return enable(transformers.MambaForCausalLM(config)).eval()


def grootl_context(fx, case_dir, via: str, value):
    import torch

    if value == "float-tensor":
        value = torch.tensor([2.5, 3.0])
    ids = torch.randint(2, 64, (2, 8), generator=torch.Generator().manual_seed(10))
    if via == "text_tree":
        (text_tree,) = _import("grootvl.ops", "text_tree")
        features = torch.rand(2, 8, 6, generator=torch.Generator().manual_seed(11))
        tree = text_tree(features, value)
        return f"tree with order shape {tuple(tree.order.shape)}"
    model = _grootl_model()
    with torch.no_grad():
        if via == "generate":
            out = model.generate(ids, max_new_tokens=2, do_sample=False, context_length=value)
            return f"generated {tuple(out.shape)}"
        logits = model(ids, context_length=value).logits
    if not torch.isfinite(logits).all():
        raise Silent("non-finite logits")
    return f"logits {tuple(logits.shape)}"


def grootl_tree_scale(fx, case_dir, value):
    (enable,) = _import("grootvl.grootl", "enable_tree_scanning")
    enable(_grootl_model(), tree_scale=value)
    return "accepted"


# ------------------------------------------------------------------------------- checkpoints

def ckpt_misshaped_nonstrict(fx, case_dir):
    import warnings

    import torch

    (load_checkpoint,) = _import("grootvl", "load_checkpoint")
    model = _grootv()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.zeros(*(s + 1 for s in v.shape)) if v.dim() else torch.zeros(2)
             for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = load_checkpoint(model, state, strict=False)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    if changed:
        raise Silent(f"mis-shaped tensors were loaded into {changed[:3]}")
    reported = [getattr(result, name, None) for name in
                ("missing_keys", "unexpected_keys", "mismatched_keys")]
    if not any(reported):
        raise Silent("strict=False with every tensor mis-shaped returned empty "
                     "missing/unexpected lists and no mismatch list")
    return f"reported {sum(len(r) for r in reported if r)} keys"


def ckpt_load(fx, case_dir, file: str):
    (load_checkpoint,) = _import("grootvl", "load_checkpoint")
    model = _grootv()
    load_checkpoint(model, str(Path(fx["ckpt"]) / file))
    return "loaded"



# ------------------------------------------------------------------------------------ images

def _dataset():
    try:
        (ImageFolderDataset,) = _import("grootvl.data", "ImageFolderDataset")
    except Unavailable:
        (ImageFolderDataset,) = _import("grootvl.data.folder", "ImageFolderDataset")
    return ImageFolderDataset


def dataset_loop(fx, case_dir):
    ds = _dataset()(Path(fx["loop_data"]) / "train")
    if len(ds) != 24:
        raise Silent(f"the folder holds 24 images but the dataset indexes {len(ds)} "
                     "(a symlink loop was followed)")
    return "24 samples"


def dataset_16bit(fx, case_dir):
    import numpy as np
    from PIL import Image

    ds = _dataset()(Path(fx["data16"]) / "train")
    path = ds.samples[0][0]
    with Image.open(path) as img:
        original = np.asarray(img, dtype=np.float64)
    loaded = np.asarray(ds.load(path), dtype=np.float64)
    loaded = loaded.mean(axis=2) if loaded.ndim == 3 else loaded
    expected = original * 255.0 / 65535.0
    err = float(np.abs(loaded - expected).max())
    if err > 1.5:
        raise Silent(f"16-bit pixels are not scaled to 8 bits (max error {err:.0f} levels; "
                     f"{int((loaded >= 255).sum())} of {loaded.size} pixels at 255)")
    return f"max error {err:.2f}"


def dataset_skips(fx, case_dir, file: str = "bomb.png"):
    root = Path(case_dir, "cls")
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        shutil.copy(fx["img_ok"], root / name / "ok.png")
    shutil.copy(Path(fx["img_ok"]).parent / file, root / "a" / f"bad_{file}")
    ds = _dataset()(root)
    index = next(i for i, (p, _) in enumerate(ds.samples) if Path(p).name.startswith("bad_"))
    item = ds[index]
    skipped = item[2] if isinstance(item, tuple) and len(item) > 2 else None
    if not skipped:
        raise Silent(f"reading the unreadable {file} reported no skipped file")
    return f"skipped {skipped}"


def dataset_all_bad(fx, case_dir):
    ds = _dataset()(fx["allbad_data"])
    ds[0]
    return "returned an item from a folder of unreadable files"


def load_images_bad(fx, case_dir):
    (load_images,) = _import("grootvl.visualize", "load_images")
    load_images([fx["img_bomb"]])
    return "loaded"


def load_images_16bit(fx, case_dir):
    import numpy as np

    (load_images,) = _import("grootvl.visualize", "load_images")
    ((_, image),) = load_images([fx["img_16bit"]])
    value = float(np.asarray(image, dtype=np.float64).mean())
    if abs(value - 20000 * 255 / 65535) > 1.5:
        raise Silent(f"a 16-bit pixel of 20000 reads as {value:.0f}, not 78 (clipped)")
    return f"mean {value:.1f}"
