"""Library-level attacks (``pyfuncs`` / ``scan_attacks`` functions in the worker): the tree operators with
degenerate and out-of-range inputs, aliased buffers, model constructors, GrootL's
``context_length``, checkpoint readers and image readers."""
from __future__ import annotations

from . import Case
from .argv import slug

E, OK, EITHER = "error", "ok", "either"
SCAN_IMPLS = ("reference", "torch", "numba", "triton")
DECAY_KINDS = ("one", "zero", "negative", "above_one", "mixed")
CKPT_ALLOW = ("ValueError", "TypeError", "UserError", "RuntimeError", "OSError",
              "UnpicklingError")


def _py(id, area, func, expect=E, names="", allow=None, timeout=120.0, **kwargs) -> Case:
    case = Case(id=id, area=area, kind="py", expect=expect, func=func, kwargs=kwargs,
                names=names, timeout=timeout)
    if allow is not None:
        case.allow = tuple(allow)
    return case


def scan_cases() -> list[Case]:
    cases = []
    for impl in SCAN_IMPLS:
        for mode in ("full", "subtree"):
            for kind in DECAY_KINDS:
                cases.append(_py(f"tree_scan/{impl}/{mode}/decay={kind}", "ops-scan",
                                 "scan_decays", OK, impl=impl, mode=mode, kind=kind))
            cases.append(_py(f"tree_scan/{impl}/{mode}/grad-any-decay", "ops-scan",
                             "scan_decay_grads", OK, impl=impl, mode=mode))
            for alias in ("same", "overlap"):
                cases.append(_py(f"tree_scan/{impl}/{mode}/alias={alias}", "ops-scan",
                                 "scan_alias", OK, impl=impl, mode=mode, alias=alias))
    bad = [("int-x", "dtype|float"), ("shape-mismatch", "shape|decay"), ("x-2d", "shape|x"),
           ("mode-bogus", "mode"), ("impl-bogus", "impl"), ("tree-batch", "batch|tree|shape"),
           ("tree-length", "vertices|shape|tree"), ("tree-not-tree", "tree"),
           ("tree-int32", "tree|int64|long")]
    for variant, names in bad:
        cases.append(_py(f"tree_scan/bad/{variant}", "ops-scan", "scan_bad", E, names,
                         variant=variant))
    cases.append(_py("tree_scan/empty-batch", "ops-scan", "scan_bad", OK, variant="empty-batch"))
    return cases


GRID_TREE_BAD = [  # (variant, expect, names)
    ("H=0", E, "height|H|empty|size"), ("W=0", E, "width|W|empty|size"),
    ("H=W=0", E, "height|width|H|W|empty|size"), ("B=0", EITHER, "batch"),
    ("C=0", EITHER, "channel"), ("3d", E, "4-D|shape"), ("int", E, "float"),
    ("cost=bogus", E, "cost"), ("root=-1", E, "root"), ("root=L", E, "root"),
    ("root=2.5", E, "root"), ("root=True", E, "root"), ("impl=bogus", E, "impl"),
    ("nan", E, "nan"), ("inf", E, "inf|nan"), ("H=W=1", OK, ""),
]
CHAIN_BAD = [("H=0", "height"), ("W=0", "width"), ("H=2.5", "height"), ("batch=-1", "batch"),
             ("major=bogus", "major"), ("root=99", "root"), ("batch=1.5", "batch")]
BFS_BAD = [("shape", "shape"), ("V=0", "num_vertices"), ("cycle", "spanning|cycle"),
           ("out-of-range", "range|vertex|id"), ("float", "integer|dtype"),
           ("negative", "range|vertex|negative|id"), ("root=V", "root"),
           ("duplicate", "spanning|cycle|tree")]
MST_BAD = [("nan-costs", "nan|cost"), ("cost-shape", "shape|cost"),
           ("out-of-range", "range|vertex|id"), ("disconnected", "connect|span"),
           ("V=0", "num_vertices|vertices")]


def tree_cases() -> list[Case]:
    cases = []
    for impl in ("numba", "torch"):
        for variant, expect, names in GRID_TREE_BAD:
            cases.append(_py(f"grid_tree/{impl}/{variant}", "ops-trees", "grid_tree_bad", expect,
                             names, impl=impl, variant=variant))
    for variant, names in CHAIN_BAD:
        cases.append(_py(f"grid_chain/{variant}", "ops-trees", "grid_chain_bad", E, names,
                         variant=variant))
    for variant, names in (("batch=-1", "batch"), ("H=0", "height"), ("root=99", "root")):
        cases.append(_py(f"random_grid_tree/{variant}", "ops-trees", "random_grid_tree_bad", E,
                         names, variant=variant))
    for impl in ("numba", "torch"):
        for variant, names in BFS_BAD:
            cases.append(_py(f"bfs_tree/{impl}/{variant}", "ops-trees", "bfs_tree_bad", E,
                             names, impl=impl, variant=variant))
        for variant, names in MST_BAD:
            cases.append(_py(f"minimum_spanning_tree/{impl}/{variant}", "ops-trees", "mst_bad",
                             E, names, impl=impl, variant=variant))
    for variant, names in (("L=0", "token|L|empty|num_tokens"), ("2d", "features|shape"),
                           ("int", "float")):
        cases.append(_py(f"text_tree/{variant}", "ops-trees", "text_tree_bad", E, names,
                         variant=variant))
    return cases


GROOTV_BAD = [  # (kwargs, names)
    ({"in_chans": 0}, "in_chans"), ({"in_chans": -1}, "in_chans"), ({"in_chans": 2.5}, "in_chans"),
    ({"in_chans": True}, "in_chans"), ({"channels": 0}, "channels"), ({"channels": -8}, "channels"),
    ({"channels": 3}, "channels"), ({"channels": 8.0}, "channels"), ({"channels": "8"}, "channels"),
    ({"depths": []}, "depths"), ({"depths": [0, 1, 1, 1]}, "depths"),
    ({"depths": [-1, 1, 1, 1]}, "depths"), ({"depths": [1.5, 1, 1, 1]}, "depths"),
    ({"depths": "1111"}, "depths"), ({"depths": None}, "depths"), ({"depths": 4}, "depths"),
    ({"depths": [0, 0, 0, 0]}, "depths"),
    ({"num_classes": -1}, "num_classes"), ({"num_classes": 2.5}, "num_classes"),
    ({"mlp_ratio": 0}, "mlp_ratio"), ({"mlp_ratio": -1}, "mlp_ratio"),
    ({"mlp_ratio": float("nan")}, "mlp_ratio"),
    ({"drop_path_rate": -0.1}, "drop_path"), ({"drop_path_rate": 1.5}, "drop_path"),
    ({"drop_path_rate": float("nan")}, "drop_path"), ({"drop_rate": 2.0}, "drop_rate"),
    ({"drop_rate": -1.0}, "drop_rate"),
    ({"head_scale": 0}, "head_scale"), ({"head_scale": -1.0}, "head_scale"),
    ({"tree_sharing": "bogus"}, "tree_sharing"), ({"tree_cost": "bogus"}, "tree_cost|cost"),
]
TREE_SSM_BAD = [({"d_model": 0}, "d_model"), ({"d_model": -4}, "d_model"),
                ({"d_state": 0}, "d_state"), ({"expand": 0}, "expand"),
                ({"expand": -1}, "expand"), ({"dt_min": -1.0}, "dt_min"), ({"dt_rank": 0}, "dt_rank"),
                ({"dt_rank": -2}, "dt_rank"), ({"d_conv": 0}, "d_conv"), ({"d_conv": 2}, "d_conv"),
                ({"topology": "bogus"}, "topology")]
FORWARD_BAD = [("H=0", "height|size|empty|H"), ("3d", "shape|4-D|dim|expected"),
               ("channels", "channel"), ("int", "float|dtype|type")]


def model_cases() -> list[Case]:
    cases = []
    for kwargs, names in GROOTV_BAD:
        key, value = next(iter(kwargs.items()))
        cases.append(_py(f"GrootV/{key}={slug(repr(value))}", "models", "grootv_ctor", E, names,
                         overrides=kwargs))
    for kwargs, names in TREE_SSM_BAD:
        key, value = next(iter(kwargs.items()))
        cases.append(_py(f"TreeSSM/{key}={slug(repr(value))}", "models", "tree_ssm_ctor", E, names,
                         overrides=kwargs))
    for variant, names in FORWARD_BAD:
        cases.append(_py(f"GrootV/forward/{variant}", "models", "grootv_forward_bad", E, names,
                         allow=("ValueError", "TypeError", "RuntimeError"), variant=variant))
    cases.append(_py("GrootV/depths=[1]", "models", "grootv_ctor", OK, overrides={"depths": [1]}))
    return cases


# context_length values: (name, value spec, expected). Batch size 2, sequence length 8.
CONTEXT = [("int=3", 3, OK), ("int=0", 0, OK), ("int=L", 8, OK), ("list-ok", [3, 5], OK),
           ("mismatch-small", [1, 2, 2], E), ("mismatch-big", [5, 5, 5], E),
           ("mismatch-one-of-two", [2], EITHER), ("float=3.5", 3.5, E), ("neg=-5", -5, E),
           ("big=1000", 1000, E), ("str", "3", E), ("bool", True, E),
           ("float-tensor", "float-tensor", E), ("none-in-list", [2, None], E),
           ("nan", float("nan"), E), ("list-neg", [-1, 3], E), ("list-big", [3, 99], E),
           ("list-float", [2.5, 3], E)]


def grootl_cases() -> list[Case]:
    cases = []
    for name, value, expect in CONTEXT:
        for via in ("forward", "text_tree"):
            if via == "text_tree" and name.startswith("mismatch-one"):
                continue
            cases.append(_py(f"grootl/{via}/context_length={name}", "grootl", "grootl_context",
                             expect, "context_length", via=via, value=value, timeout=240))
    cases.append(_py("grootl/generate/context_length=-1", "grootl", "grootl_context", E,
                     "context_length", via="generate", value=-1, timeout=240))
    for name, value in (("-1", -1.0), ("nan", float("nan")), ("str", "a")):
        cases.append(_py(f"grootl/tree_scale={name}", "grootl", "grootl_tree_scale", E,
                         "tree_scale", value=value, timeout=240))
    return cases


def checkpoint_cases() -> list[Case]:
    cases = [_py("load_checkpoint/strict=False/all-misshaped", "checkpoints",
                 "ckpt_misshaped_nonstrict", OK)]
    files = ["zero.pth", "garbage.pth", "truncated.pth", "corrupt.safetensors",
             "truncated.safetensors", "evil.pth", "evil_raw.pth", "evil_in_dict.pth", "list.pth",
             "tensor.pth", "model_not_dict.pth"]
    for name in files:
        cases.append(_py(f"load_checkpoint/{name}", "checkpoints", "ckpt_load", E,
                         name.replace(".", r"\."), allow=CKPT_ALLOW, file=name))
    cases.append(_py("load_checkpoint/missing", "checkpoints", "ckpt_load", E, "missing",
                     allow=CKPT_ALLOW + ("FileNotFoundError",), file="missing.pth"))
    return cases


IMAGE_CASES = [  # (name, func, expected, names)
    ("dataset/symlink-loop", "dataset_loop", OK, ""),
    ("dataset/16-bit-scaled", "dataset_16bit", OK, ""),
    ("dataset/bomb-skipped", "dataset_skips", OK, ""),
    ("dataset/all-unreadable", "dataset_all_bad", E, "readable|image"),
    ("visualize/load_images-bomb", "load_images_bad", E, "bomb"),
    ("visualize/load_images-16-bit", "load_images_16bit", OK, ""),
]


def image_cases() -> list[Case]:
    cases = [_py(f"images/{name}", "images", func, expect, names)
             for name, func, expect, names in IMAGE_CASES]
    for name in ("truncated.png", "garbage.png", "empty.png"):
        cases.append(_py(f"images/dataset/skip-{name}", "images", "dataset_skips", OK, file=name))
    return cases


def cases() -> list[Case]:
    return (scan_cases() + tree_cases() + model_cases() + grootl_cases() + checkpoint_cases()
            + image_cases())
