"""Command-line attacks on eval, demo, visualize, benchmark, flops, the dense commands and the
language-model commands (the train command and its config are in ``cli_cases``)."""
from __future__ import annotations

from . import Case
from .argv import (BENCHMARK, DEMO, DET_EVAL, DET_TRAIN, EVAL, FLOPS, LM_DEMO, LM_FINETUNE,
                   LM_FINETUNE_TAIL, LM_MERGE, SEG_EVAL, SEG_TRAIN, VISUALIZE, build, slug)
from .cli_cases import E, EITHER, OK, SKIP, _error_cases, _flag_cases, _float_rule, _int_rule

# ----------------------------------------------------------------------------------- eval

EVAL_FLAG_RULES = {
    "--batch-size": _int_rule(1, huge=EITHER),             # one batch of the whole folder
    "--img-size": _int_rule(1),
    "--in-chans": {**_int_rule(1), "2": E},
    "--workers": _int_rule(0, huge=SKIP),
    "--crop-pct": {**_float_rule(zero=E), "2": EITHER},
}
CHECKPOINT_ATTACKS = [  # (file, names): every one must be refused with the file's name
    ("{case}/missing.pth", "missing.pth"), ("{ckpt}", "ckpt"),
    ("{ckpt}/zero.pth", "zero.pth"), ("{ckpt}/garbage.pth", "garbage.pth"),
    ("{ckpt}/truncated.pth", "truncated.pth"), ("{ckpt}/corrupt.safetensors", "corrupt.safetensors"),
    ("{ckpt}/truncated.safetensors", "truncated.safetensors"), ("{ckpt}/evil.pth", "evil.pth"),
    ("{ckpt}/evil_raw.pth", "evil_raw.pth"), ("{ckpt}/evil_in_dict.pth", "evil_in_dict.pth"),
    ("{ckpt}/config_str.pth", "config"), ("{ckpt}/config_list.pth", "config"),
    ("{ckpt}/nan.pth", "nan|finite"), ("{ckpt}/img_size_huge.pth", "img_size|100000"),
    ("{ckpt}/list.pth", "list.pth"), ("{ckpt}/tensor.pth", "tensor.pth"),
    ("{ckpt}/model_not_dict.pth", "model_not_dict.pth"), ("{ckpt}/classes_str.pth", "classes"),
    ("{ckpt}/depths_huge.pth", "depths|channels|config"),
    ("{img_ok}", "ok.png"),
]


def eval_cases() -> list[Case]:
    cases = _flag_cases("eval", EVAL, EVAL_FLAG_RULES)
    for path, names in CHECKPOINT_ATTACKS:
        cases.append(Case(id=f"eval/checkpoint={slug(path)}", area="checkpoints", kind="cli",
                          expect=E, argv=build(EVAL, {"--checkpoint": path}), names=names,
                          timeout=120))
    more = [
        ("split=nope", {"--split": "nope"}, E, "split|nope", ""),
        ("json=folder", {"--json": "{case}"}, E, "json", ""),
        ("json=missing-dir", {"--json": "{case}/a/b/m.json"}, EITHER, "json", ""),
        ("device=bogus", {"--device": "bogus"}, E, "device", ""),
        ("model=bogus", {"--model": "no_such_model"}, E, "model", ""),
        ("model=resnet18", {"--model": "resnet18"}, E, "resnet18|fit", ""),
        ("use-ema-without-ema", {"--checkpoint": "{run}/best.pth", "--use-ema": True}, E, "ema", ""),
        ("data=missing", {"--data": "{case}/nope"}, E, "data|nope", ""),
        ("data=file", {"--data": "{img_ok}"}, E, "data|folder|ok.png", ""),
        ("data=empty", {"--data": "{case}"}, E, "class|folder", ""),
        ("data=other-classes", {"--data": "{other_data}"}, E, "class", ""),
        ("data=corrupt-images", {"--data": "{bad_data}"}, OK, "", "check_skip_reported"),
        ("data=symlink-loop", {"--data": "{loop_data}"}, OK, "", "check_eval_count"),
        ("data=16-bit", {"--data": "{data16}"}, OK, "", ""),
    ]
    for name, replace, expect, names, check in more:
        cases.append(Case(id=f"eval/{name}", area="eval", kind="cli", expect=expect,
                          argv=build(EVAL, replace), names=names, func=check))
    return cases


# ------------------------------------------------------------------------------ demo, inspect

DEMO_FLAG_RULES = {"--epochs": {"0": E, "-1": E}, "--batch-size": {"0": E, "-1": E},
                   "--img-size": {"0": E, "-1": E}, "--lr": {"nan": E, "-1": E},
                   "--log-every": {"0": E}, "--accum-steps": {"0": E}}

VIS_FLAG_RULES = {
    "--stage": {"-1": E, "99": E, "abc": E}, "--block": {"-1": E, "99": E},
    "--img-size": {"0": E, "-1": E, "100000": E, "abc": E, "1": EITHER},
    "--num-classes": {"-1": E, "0": EITHER}, "--in-chans": {"0": E, "-1": E},
}
BENCH_FLAG_RULES = {
    "--batch-size": {"0": E, "-1": E, "abc": E}, "--img-size": {"0": E, "-1": E, "100000": E},
    "--iters": {"0": E, "-1": E}, "--warmup": {"-1": E}, "--num-classes": {"-1": E},
    "--in-chans": {"0": E, "-1": E},
}
FLOPS_FLAG_RULES = {"--img-size": {"0": E, "-1": E, "100000": E, "abc": E},
                    "--in-chans": {"0": E, "-1": E}, "--num-classes": {"-1": E}}
MODEL_SET_ATTACKS = [  # --set KEY=VALUE of visualize/benchmark/flops (model keyword arguments)
    ("depths=[]", "depths"), ("channels=-8", "channels"), ("channels=3", "channels"),
    ("channels=abc", "channels"), ("bogus=1", "bogus"), ("depths=abc", "depths"),
    ("depths=[0, 1, 1, 1]", "depths"), ("mlp_ratio=-1", "mlp_ratio"),
]


def inspect_cases() -> list[Case]:
    cases = _flag_cases("demo", DEMO, DEMO_FLAG_RULES)
    cases += [Case(id="demo/data-dir=file", area="demo", kind="cli", expect=E,
                   argv=build(DEMO, {"--data-dir": "{img_ok}"}), names="data|ok.png"),
              Case(id="demo/output=file", area="demo", kind="cli", expect=E,
                   argv=build(DEMO, {"--output": "{img_ok}"}), names="output|ok.png")]
    cases += _flag_cases("visualize", VISUALIZE, VIS_FLAG_RULES)
    cases += _flag_cases("benchmark", BENCHMARK, BENCH_FLAG_RULES)
    cases += _flag_cases("flops", FLOPS, FLOPS_FLAG_RULES)
    vis = [
        ("output=file", {"--output": "{img_ok}"}, E, "output|ok.png"),
        ("pixel=nan", {"--pixel": ["nan", "nan"]}, E, "pixel"),
        ("pixel=2", {"--pixel": ["2", "2"]}, E, "pixel"),
        ("image=missing", {"--image": "{case}/none.png"}, E, "none.png"),
        ("image=folder", {"--image": "{case}"}, E, "image"),
        ("image=garbage", {"--image": "{img_garbage}"}, E, "garbage.png"),
        ("image=empty", {"--image": "{img_empty}"}, E, "empty.png"),
        ("image=truncated", {"--image": "{img_truncated}"}, E, "truncated.png"),
        ("image=bomb", {"--image": "{img_bomb}"}, E, "bomb.png"),
        ("image=16-bit", {"--image": "{img_16bit}"}, OK, ""),
        ("checkpoint=missing", {"--checkpoint": "{case}/none.pth"}, E, "none.pth"),
        ("checkpoint=folder", {"--checkpoint": "{ckpt}"}, E, "ckpt"),
        ("checkpoint=zero", {"--checkpoint": "{ckpt}/zero.pth"}, E, "zero.pth"),
        ("checkpoint=garbage", {"--checkpoint": "{ckpt}/garbage.pth"}, E, "garbage.pth"),
        ("checkpoint=evil", {"--checkpoint": "{ckpt}/evil.pth"}, E, "evil.pth"),
        ("checkpoint=corrupt-safetensors", {"--checkpoint": "{ckpt}/corrupt.safetensors"}, E,
         "corrupt.safetensors"),
        ("model=resnet18", {"--model": "resnet18", "--set": None}, E, "resnet18|grootv"),
        ("device=bogus", {"--device": "bogus"}, E, "device"),
    ]
    for name, replace, expect, names in vis:
        cases.append(Case(id=f"visualize/{name}", area="visualize", kind="cli", expect=expect,
                          argv=build(VISUALIZE, replace), names=names))
    for command, base in (("visualize", VISUALIZE), ("benchmark", BENCHMARK), ("flops", FLOPS)):
        for text, names in MODEL_SET_ATTACKS:
            cases.append(Case(id=f"{command}/set={slug(text)}", area="inspect", kind="cli",
                              expect=E, argv=build(base, extra=["--set", text]), names=names))
    for command, base in (("benchmark", BENCHMARK), ("flops", FLOPS)):
        cases += [Case(id=f"{command}/json=folder", area="inspect", kind="cli", expect=E,
                       argv=build(base, {"--json": "{case}"}), names="json"),
                  Case(id=f"{command}/model=bogus", area="inspect", kind="cli", expect=E,
                       argv=build(base, {"--model": "no_such_model", "--set": None}),
                       names="model")]
    cases.append(Case(id="benchmark/mode=bogus", area="inspect", kind="cli", expect=E,
                      argv=build(BENCHMARK, {"--mode": "bogus"}), names="mode"))
    return cases


# ------------------------------------------------------------------------------------- dense

DENSE_TRAIN_RULES = {
    "--epochs": {"-1": E, "abc": E},
    "--batch-size": {"0": E, "-1": E},
    "--lr": {"nan": E, "-1": E, "inf": E},
    "--weight-decay": {"-1": E, "nan": E},
    "--layer-decay": {"0": E, "-1": E, "nan": E},
    "--warmup-iters": {"-1": E},
    "--warmup-ratio": {"-1": E, "nan": E, "2": E},      # before the config schema
    "--warmup-lr": {"-1": E, "nan": E, "inf": E},       # since the config schema
    "--clip-grad": {"-1": E, "nan": E},
    "--eval-every": {"0": E, "-1": E},
    "--log-every": {"0": E, "-1": E},
    "--workers": {"-1": E},
    "--drop-path": {"2": E, "-1": E, "nan": E},
    "--seed": {"abc": E},
}
DET_ONLY_RULES = {"--min-size": {"0": E, "-1": E}, "--max-size": {"0": E, "-1": E},
                  "--fpn-channels": {"0": E, "-1": E}, "--box-head-dim": {"0": E},
                  "--mask-head-channels": {"0": E}, "--eval-batch-size": {"0": E}}
SEG_ONLY_RULES = {"--num-classes": {"0": E, "-1": E}, "--crop-size": {"0": E, "-1": E},
                  "--decoder-channels": {"0": E, "-1": E}, "--poly-power": {"nan": E, "-1": E},
                  "--min-lr": {"-1": E, "nan": E}}
BACKBONE_ATTACKS = [  # --pretrained-backbone files; --backbone-kwargs JSON
    ("pretrained=missing", {"--pretrained-backbone": "{case}/none.pth"}, "none.pth"),
    ("pretrained=folder", {"--pretrained-backbone": "{ckpt}"}, "ckpt|pretrained"),
    ("pretrained=zero", {"--pretrained-backbone": "{ckpt}/zero.pth"}, "zero.pth"),
    ("pretrained=garbage", {"--pretrained-backbone": "{ckpt}/garbage.pth"}, "garbage.pth"),
    ("pretrained=evil", {"--pretrained-backbone": "{ckpt}/evil.pth"}, "evil.pth"),
    ("pretrained=evil-raw", {"--pretrained-backbone": "{ckpt}/evil_raw.pth"}, "evil_raw.pth"),
    ("backbone-kwargs=list", {"--backbone-kwargs": "[1]"}, "backbone"),
    ("backbone-kwargs=notjson", {"--backbone-kwargs": "{depths"}, "backbone"),
    ("backbone-kwargs=depths-empty", {"--backbone-kwargs": '{"depths": [], "channels": 8}'},
     "depths"),
    ("backbone-kwargs=channels-neg", {"--backbone-kwargs": '{"depths": [1, 1, 1, 1], '
                                      '"channels": -8}'}, "channels"),
    ("backbone-kwargs=bogus", {"--backbone-kwargs": '{"bogus": 1}'}, "bogus"),
    ("model=bogus", {"--model": "no_such_model"}, "model"),
    ("output=file", {"--output": "{img_ok}"}, "output|ok.png"),
    ("data=missing", {"--data": "{case}/nope"}, "nope|data"),
    ("data=file", {"--data": "{img_ok}"}, "ok.png|data"),
]


def dense_cases() -> list[Case]:
    cases = _flag_cases("dense", DET_TRAIN, {**DENSE_TRAIN_RULES, **DET_ONLY_RULES}, timeout=240)
    cases += _flag_cases("dense", SEG_TRAIN, {**DENSE_TRAIN_RULES, **SEG_ONLY_RULES}, timeout=240)
    for command, base in (("det-train", DET_TRAIN), ("seg-train", SEG_TRAIN)):
        cases += _error_cases(command, "dense", base, BACKBONE_ATTACKS, timeout=240)
    cases += [
        Case(id="det-train/detector-kwargs=bogus", area="dense", kind="cli", expect=E,
             argv=build(DET_TRAIN, {"--detector-kwargs": '{"bogus": 1}'}), names="bogus"),
        Case(id="det-train/train-ann=garbage", area="dense", kind="cli", expect=E,
             argv=build(DET_TRAIN, {"--train-ann": "{img_garbage}"}), names="garbage.png|ann"),
        Case(id="det-train/train-ann=folder", area="dense", kind="cli", expect=E,
             argv=build(DET_TRAIN, {"--train-ann": "{case}"}), names="ann"),
        Case(id="det-train/corrupt-images", area="dense", kind="cli", expect=OK,
             argv=build(DET_TRAIN, {"--data": "{coco_bad}"}), func="check_dense_skips",
             timeout=240, note="unreadable images are skipped and counted"),
        Case(id="seg-train/corrupt-images-labels", area="dense", kind="cli", expect=OK,
             argv=build(SEG_TRAIN, {"--data": "{ade_bad}"}), func="check_dense_skips",
             timeout=240, note="unreadable images and label maps are skipped and counted"),
        Case(id="seg-train/epochs=0", area="dense", kind="cli", expect=EITHER,
             argv=build(SEG_TRAIN, {"--epochs": "0"}), names="epochs", func="check_summary_json"),
        Case(id="det-train/epochs=0", area="dense", kind="cli", expect=EITHER,
             argv=build(DET_TRAIN, {"--epochs": "0"}), names="epochs", func="check_summary_json"),
        Case(id="seg-train/scale=0", area="dense", kind="cli", expect=E,
             argv=build(SEG_TRAIN, {"--scale": ["0", "0"]}), names="scale"),
        Case(id="seg-train/scale=-1", area="dense", kind="cli", expect=E,
             argv=build(SEG_TRAIN, {"--scale": ["-1", "-1"]}), names="scale"),
    ]
    for command, base, other in (("det-eval", DET_EVAL, "{seg_run}/last.pth"),
                                 ("seg-eval", SEG_EVAL, "{det_run}/last.pth")):
        for name, path, names in (("zero", "{ckpt}/zero.pth", "zero.pth"),
                                  ("evil", "{ckpt}/evil.pth", "evil.pth"),
                                  ("garbage", "{ckpt}/garbage.pth", "garbage.pth"),
                                  ("classifier", "{run}/last.pth", "last.pth|task|det|seg"),
                                  ("other-task", other, "last.pth|task|det|seg"),
                                  ("folder", "{ckpt}", "ckpt")):
            cases.append(Case(id=f"{command}/checkpoint={name}", area="dense", kind="cli",
                              expect=E, argv=build(base, {"--checkpoint": path}), names=names))
        cases.append(Case(id=f"{command}/output=folder", area="dense", kind="cli", expect=E,
                          argv=build(base, {"--output": "{case}"}), names="output"))
    cases.append(Case(id="det-eval/batch-size=0", area="dense", kind="cli", expect=E,
                      argv=build(DET_EVAL, {"--batch-size": "0"}), names="batch"))
    cases.append(Case(id="seg-eval/scale=0", area="dense", kind="cli", expect=E,
                      argv=build(SEG_EVAL, {"--scale": ["0", "0"]}), names="scale"))
    return cases


# ---------------------------------------------------------------------------------------- lm

LM_FT_RULES = {
    "--max-length": {"0": E, "-1": E}, "--lr": {"nan": E, "-1": E, "inf": E},
    "--warmup-steps": {"-1": E}, "--epochs": {"0": E, "-1": E, "nan": E},
    "--batch-size": {"0": E, "-1": E}, "--grad-accum": {"0": E, "-1": E},
    "--lora-r": {"0": E, "-1": E}, "--lora-alpha": {"0": E, "-1": E},
    "--tree-scale": {"-1": E, "nan": E, "inf": E},
}


def lm_cases() -> list[Case]:
    cases = _flag_cases("lm", LM_FINETUNE, LM_FT_RULES, tail=LM_FINETUNE_TAIL, timeout=240)
    paths = [
        ("model=missing", {"--model": "{case}/none"}, "model|none"),
        ("model=file", {"--model": "{img_ok}"}, "model|ok.png"),
        ("model=empty-dir", {"--model": "{case}"}, "model|config"),
        ("data=missing", {"--data": "{case}/none.json"}, "none.json"),
        ("data=folder", {"--data": "{case}"}, "data"),
        ("data=empty", {"--data": "{lm_bad}/empty.json"}, "empty.json"),
        ("data=garbage", {"--data": "{lm_bad}/garbage.json"}, "garbage.json"),
        ("data=dict", {"--data": "{lm_bad}/dict.json"}, "dict.json"),
        ("data=ints", {"--data": "{lm_bad}/ints.json"}, "ints.json"),
        ("data=no-fields", {"--data": "{lm_bad}/nofields.json"}, "nofields.json|instruction"),
        ("output-dir=file", {"--output-dir": "{img_ok}"}, "output|ok.png"),
    ]
    cases += _error_cases("lm-finetune", "lm", LM_FINETUNE, paths, tail=LM_FINETUNE_TAIL,
                          timeout=240)
    merge = [("tree-scale=-1", {"--tree-scale": "-1"}, "tree.scale"),
             ("tree-scale=nan", {"--tree-scale": "nan"}, "tree.scale"),
             ("base=missing", {"--base": "{case}/none"}, "base|none"),
             ("adapter=missing", {"--adapter": "{case}/none"}, "adapter|none"),
             ("adapter=model-dir", {"--adapter": "{lm_model}"}, "adapter"),
             ("output-dir=file", {"--output-dir": "{img_ok}"}, "output|ok.png")]
    cases += _error_cases("lm-merge", "lm", LM_MERGE, merge, timeout=240)
    demo = [("pretrain-steps=-1", {"--pretrain-steps": "-1"}, "pretrain"),
            ("finetune-steps=-1", {"--finetune-steps": "-1"}, "finetune"),
            ("tree-scale=-1", {"--tree-scale": "-1"}, "tree.scale"),
            ("tree-scale=nan", {"--tree-scale": "nan"}, "tree.scale"),
            ("output-dir=file", {"--output-dir": "{img_ok}"}, "output|ok.png")]
    return cases + _error_cases("lm-demo", "lm", LM_DEMO, demo, timeout=300)
