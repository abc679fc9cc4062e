"""Command-line attacks: every numeric flag of every command with 0, -1, nan, inf, a huge
value and strings; every config key with wrong types and out-of-range values (``--set`` and
YAML files); every path argument missing, a folder for a file, a file for a folder; and
the hostile files (checkpoints, images) of ``fixtures.py``. This module holds the shared
rules and the train command's cases; ``cli_commands`` the other commands'."""
from __future__ import annotations

from . import Case
from .argv import TRAIN, TRAIN_FLAG_OF_KEY, build, flag_regex, slug

E, OK, EITHER, WARN = "error", "ok", "either", "warn"
HUGE_INT, HUGE_FLOAT = "1000000000000", "1e30"
INT_VALUES = ("0", "-1", HUGE_INT, "nan", "abc", "1.5")
FLOAT_VALUES = ("0", "-1", "nan", "inf", "-inf", HUGE_FLOAT, "abc")
SKIP = None


def _int_rule(minimum: int, *, huge=E, zero=None, minus=None) -> dict:
    """Expected outcome per value for an int flag whose smallest valid value is ``minimum``;
    strings and non-integers are always errors (argparse's or the schema's)."""
    rule = {"nan": E, "abc": E, "1.5": E, HUGE_INT: huge}
    rule["0"] = zero if zero is not None else (E if minimum > 0 else SKIP)
    rule["-1"] = minus if minus is not None else (E if minimum > -1 else SKIP)
    return rule


def _float_rule(*, zero=SKIP, minus=E, huge=E, inf=E) -> dict:
    return {"0": zero, "-1": minus, "nan": E, "inf": inf, "-inf": E, HUGE_FLOAT: huge, "abc": E}


def _flag_cases(area: str, base, rules: dict, *, extra_replace=None, tail=(), prefix=None,
                timeout=150.0, check="") -> list[Case]:
    cases = []
    command = base[0]
    for flag, rule in rules.items():
        for value, expect in rule.items():
            if expect is SKIP:
                continue
            replace = {flag: value, **(extra_replace or {}).get(flag, {})}
            cases.append(Case(
                id=f"{prefix or command}/{flag.lstrip('-')}={slug(value)}", area=area, kind="cli",
                expect=expect, argv=build(base, replace, tail=tail), names=flag_regex(flag),
                timeout=timeout, func=check if expect != E else "", flag=flag))
    return cases


def _error_cases(prefix: str, area: str, base, rows, *, tail=(), timeout=150.0) -> list[Case]:
    """Cases ``PREFIX/NAME`` expecting a clean error: rows of (name, flag edits, names)."""
    return [Case(id=f"{prefix}/{name}", area=area, kind="cli", expect=E,
                 argv=build(base, replace, tail=tail), names=names, timeout=timeout)
            for name, replace, names in rows]


# ------------------------------------------------------------------------------ train flags

# Divergence needs a second optimizer step to show up in a training loss.
_TWO_STEPS = {"--limit-train-steps": "2"}
TRAIN_FLAG_RULES = {
    "--epochs": _int_rule(1, huge=SKIP),                   # a huge count is a legit long run
    "--warmup-epochs": _int_rule(0, huge=EITHER),
    "--batch-size": _int_rule(1),
    "--accum-steps": _int_rule(1),
    "--img-size": _int_rule(1),                            # huge: must not allocate unboundedly
    "--in-chans": {**_int_rule(1), "2": E},                # images are read as RGB or grey only
    "--workers": _int_rule(0, huge=SKIP),                  # huge would fork-bomb a shared machine
    "--seed": _int_rule(0, minus=EITHER, huge=EITHER),     # torch seeds reach 2**64
    "--threads": _int_rule(1, huge=SKIP, zero=EITHER),
    "--limit-train-steps": _int_rule(1, zero=EITHER, huge=EITHER),  # no limit in effect
    "--limit-val-steps": _int_rule(1, zero=EITHER, huge=EITHER),
    "--log-every": _int_rule(1, huge=EITHER),
    "--lr": _float_rule(zero=EITHER),
    "--weight-decay": {**_float_rule(), "-5": E},
    "--clip-grad": _float_rule(zero=EITHER, huge=SKIP, inf=EITHER),
    "--drop-path": {**_float_rule(), "1": E, "2": E},
}
TRAIN_FLAG_EXTRA = {"--lr": _TWO_STEPS, "--weight-decay": _TWO_STEPS}


def train_flag_cases() -> list[Case]:
    cases = _flag_cases("train-flags", TRAIN, TRAIN_FLAG_RULES, extra_replace=TRAIN_FLAG_EXTRA,
                        check="check_train_ok")
    more = [
        ("batch1", {"--batch-size": "1"}, E, "batch", "mixup/cutmix or BatchNorm need 2 samples"),
        ("batch1-resnet", {"--batch-size": "1", "--model": "resnet18", "--set": None}, E,
         "batch", "BatchNorm cannot train on one sample"),
        ("amp=bogus", {"--amp": "bogus"}, E, "amp", ""),
        ("progress=bogus", {"--progress": "bogus"}, E, "progress", ""),
        ("device=gpu", {"--device": "gpu"}, E, "device", ""),
        ("device=cuda99", {"--device": "cuda:99"}, E, "device|cuda", ""),
        ("device=empty", {"--device": ""}, E, "device", ""),
        ("model=bogus", {"--model": "no_such_model"}, E, "model", ""),
        ("model=empty", {"--model": ""}, E, "model", ""),
        ("config=missing", {"--config": "{case}/missing.yaml"}, E, "config|missing", ""),
        ("config=folder", {"--config": "{case}"}, E, "config", ""),
        ("config=checkpoint", {"--config": "{run}/last.pth"}, E, "config|yaml", ""),
        ("data=missing", {"--data": "{case}/nope"}, E, "data|nope", ""),
        ("data=file", {"--data": "{img_ok}"}, E, "data|folder", ""),
        ("data=empty-dir", {"--data": "{case}"}, E, "train|class|data", ""),
        ("data=no-val", {"--data": "{data_noval}"}, E, "val", ""),
        ("output=file", {"--output": "{img_ok}"}, E, "output|folder|exists", ""),
        ("output=under-file", {"--output": "{img_ok}/sub"}, E, "output|folder", ""),
        ("set=no-equals", {}, E, "set|key=value", ""),
    ]
    for name, replace, expect, names, note in more:
        extra = ["--set", "sched.epochs"] if name == "set=no-equals" else []
        cases.append(Case(id=f"train/{name}", area="train-flags", kind="cli", expect=expect,
                          argv=build(TRAIN, replace, extra=extra), names=names, note=note))
    return cases


# ------------------------------------------------------------------------- config keys (--set)

# (key, YAML value, expected outcome, what the message must name beyond the key)
STR, NUM = "abc", "5"
SET_ATTACKS = [
    ("model.name", "5", E), ("model.name", "[]", E), ("model.name", "null", E),
    ("model.drop_path_rate", STR, E), ("model.drop_path_rate", "[0.1]", E),
    ("model.drop_path_rate", "null", EITHER), ("model.drop_path_rate", "1.5", E),
    ("model.kwargs", "[1]", E), ("model.kwargs", STR, E), ("model.kwargs", "5", E),
    ("model.kwargs", "{channels: -8, depths: [1, 1, 1, 1]}", E),
    ("model.kwargs", "{channels: 8, depths: []}", E),
    ("model.kwargs", "{channels: 8, depths: [1, 1, 1, 1], bogus: 1}", E),
    ("model.kwargs", "{channels: 0, depths: [1, 1, 1, 1]}", E),
    ("model.kwargs", "{channels: 8, depths: [0, 1, 1, 1]}", E),
    ("model.kwargs", "{channels: 8, depths: [-1, 1, 1, 1]}", E),
    ("model.init_checkpoint", "5", E), ("model.init_checkpoint", "{case}/missing.pth", E),
    ("model.init_checkpoint", "{case}", E), ("model.init_checkpoint", "{ckpt}/zero.pth", E),
    ("model.init_checkpoint", "{ckpt}/garbage.pth", E),
    ("model.init_checkpoint", "{ckpt}/evil.pth", E),
    ("model.init_checkpoint", "{ckpt}/nan.pth", E),
    ("data.train_split", "null", E), ("data.train_split", "nope", E),
    ("data.val_split", "nope", E), ("data.val_split", "[]", E),
    ("data.img_size", STR, E), ("data.img_size", "1.5", E), ("data.img_size", "[32]", E),
    ("data.img_size", "null", E), ("data.img_size", "true", E),
    ("data.in_chans", STR, E), ("data.in_chans", "null", E), ("data.in_chans", "0", E),
    ("data.interpolation", "bogus", E), ("data.interpolation", "5", E),
    ("data.crop_pct", "0", E), ("data.crop_pct", "-1", E), ("data.crop_pct", STR, E),
    ("data.crop_pct", ".nan", E),
    ("data.mean", "0.5", E), ("data.mean", "[0.5]", EITHER), ("data.mean", "[a, b, c]", E),
    ("data.mean", "[]", E),
    ("data.std", "[0, 0, 0]", E), ("data.std", "[-1, -1, -1]", E), ("data.std", "0.5", E),
    ("data.num_workers", STR, E), ("data.num_workers", "-1", E),
    ("data.pin_memory", STR, E), ("data.pin_memory", "5", E),
    ("aug.auto_augment", "rand-bogus", E), ("aug.auto_augment", "5", E),
    ("aug.color_jitter", "-1", E), ("aug.color_jitter", STR, E),
    ("aug.scale", "[1.0, 0.08]", E), ("aug.scale", "0.5", E), ("aug.scale", "[-1, 1]", E),
    ("aug.hflip", "-1", E), ("aug.hflip", "2", E), ("aug.reprob", "-1", E), ("aug.reprob", "2", E),
    ("aug.remode", "bogus", E), ("aug.recount", "-1", E),
    ("aug.mixup", "-1", E), ("aug.mixup", STR, E), ("aug.cutmix", "-1", E),
    ("aug.mixup_prob", "2", E), ("aug.mixup_prob", "-1", E), ("aug.mixup_switch_prob", "2", E),
    ("aug.mixup_mode", "bogus", E),
    ("aug.label_smoothing", "-0.1", E), ("aug.label_smoothing", "1.5", E),
    ("optim.name", "bogus", E), ("optim.name", "5", E),
    ("optim.base_lr", STR, E), ("optim.base_lr", "[1e-3]", E), ("optim.base_lr", "null", E),
    ("optim.base_lr", "'1e-3'", EITHER), ("optim.base_lr", "-1", E),
    ("optim.lr_base_batch", "0", E), ("optim.lr_base_batch", "-1", E),
    ("optim.weight_decay", "-5", E), ("optim.weight_decay", STR, E),
    ("optim.eps", "-1", E), ("optim.eps", STR, E),
    ("optim.betas", "[0.9]", E), ("optim.betas", "[2, 0.9]", E), ("optim.betas", "0.9", E),
    ("optim.betas", STR, E),
    ("optim.momentum", "-1", E),
    ("optim.clip_grad", "-1", E), ("optim.clip_grad", STR, E), ("optim.clip_grad", ".nan", E),
    ("optim.accum_steps", "0", E), ("optim.accum_steps", "1.5", E),
    ("sched.name", "bogus", E), ("sched.name", "5", E),
    ("sched.epochs", "three", E), ("sched.epochs", "null", E), ("sched.epochs", "1.5", E),
    ("sched.epochs", "[1, 2]", E), ("sched.epochs", "'1'", EITHER), ("sched.epochs", "0", E),
    ("sched.warmup_epochs", "-3", E), ("sched.warmup_epochs", "1.5", E),
    ("sched.warmup_lr", "-1", E), ("sched.min_lr", "-1", E), ("sched.min_lr", STR, E),
    ("sched.step_on_epochs", STR, E),
    ("ema.enabled", STR, E), ("ema.enabled", "5", E),
    ("ema.decay", "-1", E), ("ema.decay", "5", E), ("ema.decay", "1.5", E),
    ("ema.decay", ".nan", E), ("ema.decay", STR, E),
    ("ema.evaluate", STR, E),
    ("train.batch_size", "[1, 2]", E), ("train.batch_size", STR, E),
    ("train.batch_size", "2.5", E), ("train.batch_size", "'4'", EITHER),
    ("train.epochs_between_eval", "0", E), ("train.epochs_between_eval", "-1", E),
    ("train.amp", "bogus", E), ("train.channels_last", STR, E),
    ("train.grad_checkpointing", "5", E), ("train.sync_bn", STR, E),
    ("train.seed", STR, E), ("train.seed", "1.5", E), ("train.deterministic", STR, E),
    ("train.device", "bogus", E), ("train.threads", STR, E),
    ("train.limit_train_steps", STR, E), ("train.limit_train_steps", "-1", E),
    ("train.limit_val_steps", "-1", E),
    ("train.log_every", "0", E), ("train.log_every", "-1", E),
    ("train.progress", "bogus", E),
]
SET_SHAPE_ATTACKS = [  # the key path itself is wrong
    ("unknown-key", "optim.bogus_key=1", "bogus_key"),
    ("section-scalar", "data=5", "data"),
    ("section-list", "model=[1]", "model"),
    ("too-deep", "optim.base_lr.x=1", "base_lr"),
    ("bad-yaml", "optim.betas=[0.9", "betas|yaml"),
    ("empty-key", "=1", "key|set"),
]


def set_cases() -> list[Case]:
    cases = []
    for key, value, expect in SET_ATTACKS:
        drop = [TRAIN_FLAG_OF_KEY[key]] if key in TRAIN_FLAG_OF_KEY else []
        extra = ["--set", f"{key}={value}"]
        if key == "model.kwargs":
            drop = []
            replace = {"--set": f"{key}={value}"}
        else:
            replace = {}
        cases.append(Case(id=f"set/{key}={slug(value)}", area="train-set", kind="cli",
                          expect=expect, argv=build(TRAIN, replace, drop=drop, extra=extra),
                          names=flag_regex(key), func="check_train_ok" if expect != E else ""))
    for name, text, names in SET_SHAPE_ATTACKS:
        cases.append(Case(id=f"set/{name}", area="train-set", kind="cli", expect=E,
                          argv=build(TRAIN, extra=["--set", text]), names=names))
    return cases


# --------------------------------------------------------------------------- YAML config files

YAML_ATTACKS = [  # (name, file text, expected, names)
    ("string-lr", "optim:\n  base_lr: '1e-3'\n", EITHER, "base_lr"),
    ("scalar-mean", "data:\n  mean: 0.5\n", E, "mean"),
    ("bogus-sched", "sched:\n  name: bogus\n", E, "sched|name|bogus"),
    ("list-batch", "train:\n  batch_size: [1, 2]\n", E, "batch_size"),
    ("word-epochs", "sched:\n  epochs: three\n", E, "epochs"),
    ("null-epochs", "sched:\n  epochs: null\n", E, "epochs"),
    ("section-scalar", "data: 5\n", E, "data"),
    ("section-list", "model: [1, 2]\n", E, "model"),
    ("top-list", "- 1\n- 2\n", E, "config|mapping"),
    ("top-scalar", "5\n", E, "config|mapping"),
    ("bad-syntax", "optim: {base_lr: [\n", E, "yaml|config"),
    ("garbage", "\x00\x01\x02\xff binary", E, "yaml|config"),
    ("base-missing", "base: no_such_base\n", E, "base|no_such_base"),
    ("base-int", "base: 5\n", E, "base"),
    ("base-self", "base: cfg.yaml\n", E, "base|loop"),
    ("unknown-key", "optim:\n  bogus_key: 1\n", E, "bogus_key"),
    ("ema-5", "ema:\n  decay: 5\n", E, "decay"),
    ("clip-neg", "optim:\n  clip_grad: -1\n", E, "clip_grad"),
    ("img-float", "data:\n  img_size: 1.5\n", E, "img_size"),
    ("depths-empty", "model:\n  kwargs: {channels: 8, depths: []}\n", E, "depths"),
    ("mixup-word", "aug:\n  mixup: high\n", E, "mixup"),
    ("kwargs-list", "model:\n  kwargs: [1, 2]\n", E, "kwargs"),
    ("bool-as-int", "train:\n  batch_size: true\n", E, "batch_size"),
    ("alias-bomb", "model:\n  kwargs:\n    channels: 8\n    depths: [1, 1, 1, 1]\n"
     "    a: &a [x, x, x, x, x, x, x, x, x, x]\n    b: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
     "    c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n    d: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n"
     "    e: [*d, *d, *d, *d, *d, *d, *d, *d]\n", E, "kwargs|a|b"),
    ("empty-file", "", EITHER, ""),
]


def _yaml_keys(text: str) -> list[str]:
    """Dotted keys ``section.key`` a two-level YAML text sets (a plain line scan)."""
    keys, section = [], None
    for line in text.splitlines():
        name = line.strip().split(":", 1)[0]
        if line and not line.startswith(" ") and ":" in line:
            section = name
        elif section and line.startswith("  ") and ":" in line:
            keys.append(f"{section}.{name}")
    return keys


def yaml_cases() -> list[Case]:
    cases = []
    for name, text, expect, names in YAML_ATTACKS:
        # a dedicated flag of the base command line would win over the file's key
        drop = ["--set"] if "kwargs" in text else []
        drop += [TRAIN_FLAG_OF_KEY[key] for key in _yaml_keys(text) if key in TRAIN_FLAG_OF_KEY]
        argv = build(TRAIN, {"--config": "{case}/cfg.yaml"}, drop=drop)
        cases.append(Case(id=f"yaml/{name}", area="config-yaml", kind="cli", expect=expect,
                          argv=argv, names=names, prep="yaml", kwargs={"yaml": text},
                          func="check_train_ok" if expect != E else ""))
    return cases


def cases() -> list[Case]:
    from . import cli_commands as other

    return (train_flag_cases() + set_cases() + yaml_cases() + other.eval_cases()
            + other.inspect_cases() + other.dense_cases() + other.lm_cases())
