"""``grootvl ablate``: train the same small GrootV once per scan topology, task and seed."""
from __future__ import annotations

import argparse
import sys
import textwrap

from .common import cli_command, print_config

DESCRIPTION = """\
Why a tree? Train the same small GrootV (one architecture, one recipe, one seed set) once per
scan-topology variant, task and seed with the training engine, and write OUTPUT/ablation.json
(per variant and task: the accuracy of every seed, mean and std, params, FLOPs, training
img/s, times, settings), ablation.md (the table) and ablation.png (bars with error bars).
Each finished run is kept under OUTPUT/runs/TASK/VARIANT/seedN: rerunning the command
after an interruption trains only what is missing (a run stopped halfway resumes from its
last epoch). Tasks: digits (scikit-learn's handwritten digits) and pathfinder (the
long-range task of grootvl.data.pathfinder), both generated in memory; their recipes are
the packaged configs ablate_digits and ablate_pathfinder (_quick / _scale for the other
profiles; print them with --print-config)."""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def _epilog() -> str:
    from ..tasks.ablation import VARIANT_NOTES

    variants = "\n".join(f"  {name:<12} {note}" for name, note in VARIANT_NOTES.items())
    return f"""\
variants:
{variants}

examples:
  grootvl ablate --output runs/ablate                 # everything (<= 1 h on 2 CPU cores)
  grootvl ablate --quick --output /tmp/ablate-quick   # a test of the command (minutes)
  grootvl ablate --variants tree,raster --tasks pathfinder --seeds 5
  grootvl ablate --set sched.epochs=20 --set pathfinder.generated.train_images=8000
  grootvl ablate --scale --device cuda --output runs/ablate-scale   # the real experiment
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ablate", help="compare scan topologies: train one small GrootV per variant, task, seed",
        description=textwrap.fill(" ".join(DESCRIPTION.split()), 88), epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", metavar="DIR",
                   help="ablation folder (default: runs/ablate, runs/ablate-quick, "
                   "runs/ablate-scale)")
    p.add_argument("--variants", metavar="A,B", help="comma-separated subset (default: all)")
    p.add_argument("--tasks", metavar="A,B", help="comma-separated subset of digits, pathfinder "
                   "(default: both)")
    p.add_argument("--seeds", type=_positive, metavar="N",
                   help="seeds per variant and task, train.seed upwards (default: 3; --quick 1; "
                   "--scale 5)")
    p.add_argument("--jobs", type=_positive, metavar="N",
                   help="training processes at once (default: one per usable CPU core, or 1 "
                   "on a GPU)")
    p.add_argument("--threads", type=_positive, metavar="N",
                   help="CPU threads per process (default: usable cores / jobs)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (train.device)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="tiny data, 2 epochs, 1 seed: tests the command in a few minutes; "
                      "its numbers are meaningless")
    size.add_argument("--scale", action="store_true",
                      help="larger data, model and schedule, 5 seeds: the real experiment, for "
                      "a GPU")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="[TASK.]KEY=VALUE",
                   help="override a config key of every task (sched.epochs=20) or of one "
                   "(pathfinder.generated.train_images=8000); repeatable")
    p.add_argument("--print-config", action="store_true",
                   help="print each task's resolved config (every key, with its description) "
                   "and exit")
    p.set_defaults(func=cli_command("ablate")(run_ablate))


def run_ablate(args) -> int:
    from ..tasks.ablation import ABLATION_TASKS, VARIANTS, parse_names, run_ablation, task_config

    profile = "quick" if args.quick else "scale" if args.scale else "default"
    variants = parse_names(args.variants, VARIANTS, "--variants")
    tasks = parse_names(args.tasks, ABLATION_TASKS, "--tasks")
    if args.print_config:
        for task in tasks:
            print(f"# ---- task {task} (profile {profile}; the variants set model.kwargs."
                  "topology/root/tree_cost, --seeds sets train.seed)")
            print_config(task_config(task, profile, args.overrides,
                                     {"train.device": (args.device, "--device")}))
        return 0
    output = args.output or {"default": "runs/ablate", "quick": "runs/ablate-quick",
                             "scale": "runs/ablate-scale"}[profile]
    report = run_ablation(output, variants=variants, tasks=tasks, profile=profile,
                          seeds=args.seeds, jobs=args.jobs, threads=args.threads,
                          device=args.device, overrides=args.overrides)
    for task in tasks:
        best = max(report["results"][task].items(), key=lambda item: item[1]["mean"])
        print(f"{task}: best {best[0]} {best[1]['mean']:.1f}%", file=sys.stderr)
    return 0
