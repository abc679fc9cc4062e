"""``grootvl ablate``: one small GrootV trained once per scan topology, task and seed.

Every run is an ordinary classification run of the training engine on a data set generated
in memory (the ``generated`` config section); runs differ only in the variant's
``model.kwargs`` (``topology``, ``root``, ``tree_cost``: docs/design.md, "Scan
topologies") and in ``train.seed``. The recipe of each task is a packaged config
(``ablate_<task>.yaml``, with ``_quick`` and ``_scale`` profiles), overridable with
``--set KEY=VALUE`` (every task) or ``--set TASK.KEY=VALUE`` (one task).

Layout of the output folder::

    DIR/runs/<task>/<variant>/seed<N>/   the engine's run folder (last.pth, best.pth,
                                         log.jsonl, ...), settings.json (the run's config)
                                         and result.json (written last, atomically)
    DIR/ablation.json, ablation.md, ablation.png   the report (grootvl.tasks.ablation_report)

A run with a ``result.json`` is finished and never retrained; one interrupted halfway
resumes from its ``last.pth`` (the engine's exact resumption). A folder trained with other
settings is refused rather than mixed into the report.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TextIO

import torch

from ..data import check_generated
from ..engine.config import config_from_dict
from ..engine.distributed import resolve_device
from ..engine.loop import LOG_FILE, METRICS_FILE
from ..engine.progress import format_duration, read_jsonl
from ..engine.snapshots import LAST, atomic_write_text, read_snapshot_meta
from ..errors import UserError
from .config import RunConfig, load_config

__all__ = ["ABLATION_TASKS", "PROFILES", "VARIANTS", "Profile", "RunSpec", "parse_names",
           "plan_runs", "run_ablation", "task_config", "train_one"]

#: name -> the TreeSSM options of the variant (every key given, so a run's config says all)
VARIANTS: dict[str, dict[str, str]] = {
    "tree": dict(topology="tree", root="all", tree_cost="cosine"),
    "raster": dict(topology="raster", root="all", tree_cost="cosine"),
    "cross": dict(topology="cross", root="all", tree_cost="cosine"),
    "random": dict(topology="random", root="all", tree_cost="cosine"),
    "tree-first": dict(topology="tree", root="first", tree_cost="cosine"),
    "tree-last": dict(topology="tree", root="last", tree_cost="cosine"),
    "tree-l2": dict(topology="tree", root="all", tree_cost="l2"),
    "tree-l1": dict(topology="tree", root="all", tree_cost="l1"),
    "raster-last": dict(topology="raster", root="last", tree_cost="cosine"),
}
VARIANT_NOTES = {
    "tree": "GrootV as released: MST of the features, cosine cost, every pixel a root",
    "raster": "the row-major chain (a 1-D scan's order), full scan",
    "cross": "row-major and column-major chains, summed",
    "random": "MST of random costs: a spanning tree that ignores the features",
    "tree-first": "feature tree, one root at the first pixel, subtree scan",
    "tree-last": "feature tree, one root at the last pixel, subtree scan",
    "tree-l2": "feature tree under squared Euclidean edge costs",
    "tree-l1": "feature tree under Manhattan edge costs",
    "raster-last": "causal 1-D selective scan in raster order (pixel i sees pixels <= i)",
}
#: task name -> packaged config of its recipe
ABLATION_TASKS = {"digits": "ablate_digits", "pathfinder": "ablate_pathfinder"}
VARIANT_KEYS = tuple(f"model.kwargs.{key}" for key in ("topology", "root", "tree_cost"))
# keys that change how a run is executed, not what it computes: ignored when comparing a
# run folder's settings with the current ones
_EXECUTION_KEYS = ("train.progress", "train.log_every", "train.threads", "train.device",
                   "data.num_workers", "data.pin_memory")
MAX_SEEDS = 100
RESULT_FILE = "result.json"
SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class Profile:
    """A size of the experiment: the packaged config suffix and the default seed count."""

    suffix: str
    seeds: int
    note: str | None = None


PROFILES = {
    "default": Profile("", 3),
    "quick": Profile("_quick", 1, "--quick: tiny data and 1-2 epochs to test the command; "
                     "the accuracies are meaningless"),
    "scale": Profile("_scale", 5),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run of the ablation (picklable: handed to worker processes)."""

    task: str
    variant: str
    seed: int
    folder: str
    config: dict        # the run's RunConfig, model_dump(mode="json")

    @property
    def label(self) -> str:
        return f"{self.task} {self.variant} seed {self.seed}"


def parse_names(text: str | None, valid: Iterable[str], option: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` (None: all ``valid``), in the order of ``valid``;
    an unknown or missing name is a one-line :class:`UserError` listing the valid ones."""
    valid = list(valid)
    if text is None:
        return valid
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        what = f"unknown name(s) {', '.join(unknown)}" if unknown else "no name given"
        raise UserError(f"{option} {text!r}: {what}; choose from {', '.join(valid)} "
                        "(comma-separated)")
    return [name for name in valid if name in names]


def task_config(task: str, profile: str = "default", overrides: Iterable[str] = (),
                flags: dict | None = None) -> RunConfig:
    """The recipe of ``task`` for ``profile``: its packaged config <- the ``--set`` overrides
    for every task (``KEY=VALUE``) or for this one (``TASK.KEY=VALUE``) <- ``flags``."""
    mine = []
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        head, _, rest = key.partition(".")
        if head in ABLATION_TASKS:
            if head != task:
                continue
            text, key = text.split(".", 1)[1], rest
        if key.startswith("model.kwargs") and (key == "model.kwargs" or key in VARIANT_KEYS):
            raise UserError(f"--set {text}: the variants set {', '.join(VARIANT_KEYS)}; choose "
                            "variants with --variants, and set other model.kwargs keys one by "
                            "one (e.g. --set model.kwargs.channels=32)")
        mine.append(text)
    try:
        return load_config(ABLATION_TASKS[task] + PROFILES[profile].suffix, mine, flags)
    except UserError as exc:
        raise UserError(f"task {task}: {exc}") from None


def plan_runs(output: str | os.PathLike, tasks: list[str], variants: list[str], seeds: int,
              profile: str = "default", overrides: Iterable[str] = (), device: str = "auto",
              threads: int | None = None) -> list[RunSpec]:
    """Every (task, variant, seed) run with its full config, task by task."""
    overrides = list(overrides)
    runs = []
    for task in tasks:
        base_seed = task_config(task, profile, overrides).train.seed
        for variant in variants:
            for k in range(seeds):
                flags = {f"model.kwargs.{key}": (value, f"--variants {variant}")
                         for key, value in VARIANTS[variant].items()}
                flags.update({"train.seed": (base_seed + k, "--seeds"),
                              "train.device": (device, "--device"),
                              "train.threads": (threads, "--jobs/--threads")})
                cfg = task_config(task, profile, overrides, flags)
                folder = Path(output) / "runs" / task / variant / f"seed{base_seed + k}"
                runs.append(RunSpec(task, variant, base_seed + k, str(folder),
                                    cfg.model_dump(mode="json")))
        gen = cfg.generated  # the data settings of every run of the task, checked up front
        try:
            check_generated(gen.name, cfg.data.img_size, gen.train_images, gen.val_images,
                            gen.seed, gen.options)
        except UserError as exc:
            raise UserError(f"task {task}: {exc}") from None
    return runs


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _identity(config: dict) -> dict:
    return {k: v for k, v in _flatten(config).items() if k not in _EXECUTION_KEYS}


def check_settings(run: RunSpec) -> None:
    """Record the run's settings in its folder, or refuse a folder trained with others."""
    path = Path(run.folder) / SETTINGS_FILE
    if path.is_file():
        saved, current = _identity(json.loads(path.read_text())), _identity(run.config)
        if saved != current:
            diff = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
            shown = "; ".join(f"{k}: {current.get(k)!r} now, {saved.get(k)!r} there"
                              for k in diff[:3])
            raise UserError(f"{run.folder} was trained with other settings ({shown}"
                            f"{' ...' if len(diff) > 3 else ''}); use another --output, or "
                            "delete that folder to train it again")
    else:
        atomic_write_text(json.dumps(run.config, indent=1), path)


def read_result(run: RunSpec) -> dict | None:
    """The finished run's result, or None."""
    path = Path(run.folder) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def train_one(run: RunSpec) -> dict:
    """Train one run through the engine (resuming its ``last.pth``), measure it, and write
    ``result.json`` atomically; returns the result. Runs in a worker process with --jobs > 1."""
    from ..flops import count_flops_params
    from ..models.factory import create_model
    from ..models.weights import load_weights
    from . import train
    from .classification import eval_model_spec

    cpu_start, wall_start = time.process_time(), time.perf_counter()
    folder = Path(run.folder)
    cfg = config_from_dict(RunConfig, run.config, f"{folder / SETTINGS_FILE}")
    resumed_from = None
    if (folder / LAST).is_file():
        resumed_from = int(read_snapshot_meta(folder / LAST)["epoch"]) + 1
    elif (folder / LOG_FILE).is_file():
        (folder / LOG_FILE).unlink()  # a start that saved nothing: begin a fresh log
    summary = train(cfg, folder, resume="auto")
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start

    epochs = {r["epoch"]: r for r in read_jsonl(folder / LOG_FILE) if r["event"] == "epoch"}
    images = sum(r["steps"] for r in epochs.values()) * cfg.train.batch_size
    train_s = sum(r["train_time_s"] for r in epochs.values())
    # rebuild the model as `grootvl eval` would (name and kwargs from the snapshot's config)
    meta = read_snapshot_meta(folder / LAST)
    name, kwargs = eval_model_spec(meta, None, folder / LAST)
    model = create_model(name, len(meta["classes"]), cfg.data.in_chans, **kwargs)
    load_weights(model, folder / LAST, model_name=name)
    size = cfg.data.img_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's tracer warnings are noise here
        flops = count_flops_params(model, (cfg.data.in_chans, size, size))
    # the last evaluation (also when a run killed after its last snapshot trains nothing now)
    final = json.loads((folder / METRICS_FILE).read_text())
    if final["epoch"] != cfg.sched.epochs - 1:
        raise UserError(f"{folder / METRICS_FILE} holds epoch {final['epoch']}, not the last "
                        f"one ({cfg.sched.epochs - 1}); delete {folder} to train it again")
    result = {
        "task": run.task, "variant": run.variant, "seed": run.seed,
        "accuracy": final["top1"], "best_accuracy": summary["best_top1"],
        "val_loss": final["loss"], "val_images": final["count"],
        "classes": len(meta["classes"]), "epochs": cfg.sched.epochs,
        "params": flops.params, "gflops": flops.gflops, "tree_gflops": flops.tree_gflops,
        "mst_comparisons": flops.mst_comparisons,
        "train_img_per_s": images / train_s if train_s > 0 else None,
        "wall_time_s": round(wall, 2), "cpu_time_s": round(cpu, 2),
        "resumed_from_epoch": resumed_from, "threads": cfg.train.threads,
        "device": str(cfg.train.device), "model": {"name": name, "kwargs": kwargs},
    }
    atomic_write_text(json.dumps(result, indent=1), folder / RESULT_FILE)
    return result


def usable_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def default_jobs(device: torch.device) -> int:
    """Training processes at once: one per usable CPU core (each with one thread: small
    models gain little from a second thread, see benchmarks/bench_ablate_jobs.py), or one
    on a GPU."""
    return 1 if device.type == "cuda" else usable_cores()


def run_ablation(output: str | os.PathLike, *, variants: list[str] | None = None,
                 tasks: list[str] | None = None, profile: str = "default",
                 seeds: int | None = None, jobs: int | None = None, threads: int | None = None,
                 device: str = "auto", overrides: Iterable[str] = (),
                 stream: TextIO | None = None) -> dict:
    """Train every (task, variant, seed) run not finished yet, then write the report.

    Args:
        output: the ablation folder (created; a file there is an error).
        variants, tasks: subsets of :data:`VARIANTS` and :data:`ABLATION_TASKS` (None: all).
        profile: ``"default"``, ``"quick"`` or ``"scale"`` (:data:`PROFILES`).
        seeds: seeds per variant and task (None: the profile's), ``train.seed`` upwards.
        jobs: training processes at once (None: :func:`default_jobs`).
        threads: CPU threads per process (None: the usable cores divided by ``jobs``).
        device: ``train.device`` of every run.
        overrides: ``--set`` texts, ``KEY=VALUE`` or ``TASK.KEY=VALUE``.
        stream: where progress lines go (default stderr).

    Returns the report written to ``ablation.json``. With ``jobs`` > 1 the runs train in
    spawned processes, so a script calling this needs the usual
    ``if __name__ == "__main__":`` guard around its entry point.
    """
    from .ablation_report import write_report

    stream = stream or sys.stderr
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; give a folder (created if missing)")
    variants = list(variants or VARIANTS)
    tasks = list(tasks or ABLATION_TASKS)
    if profile not in PROFILES:
        raise UserError(f"profile {profile!r}: use one of {', '.join(PROFILES)}")
    seeds = PROFILES[profile].seeds if seeds is None else seeds
    for name, value, most in (("--seeds", seeds, MAX_SEEDS), ("--jobs", jobs, None),
                              ("--threads", threads, usable_cores())):
        if value is not None and not 1 <= value <= (most or value):
            raise UserError(f"{name} {value}: must be a positive integer"
                            + (f" of at most {most}" if most else ""))
    resolved = resolve_device(device)  # a bad name, or CUDA missing: one-line error
    jobs = jobs or default_jobs(resolved)
    if threads is None and resolved.type == "cpu":
        threads = max(1, usable_cores() // jobs)
    runs = plan_runs(output, tasks, variants, seeds, profile, overrides, device, threads)
    for run in runs:
        check_settings(run)
    results = {run.folder: read_result(run) for run in runs}
    pending = [run for run in runs if results[run.folder] is None]
    folders = {(run.task, run.variant, run.seed): run.folder for run in runs}
    jobs = max(1, min(jobs, len(pending)))
    print(f"ablate: {len(runs)} runs ({len(tasks)} task(s) x {len(variants)} variant(s) x "
          f"{seeds} seed(s)), {len(runs) - len(pending)} finished before; {jobs} job(s)"
          f"{f' x {threads} thread(s)' if threads else ''} on {resolved}; writing {output}",
          file=stream, flush=True)
    start = time.perf_counter()
    for result in _execute(pending, jobs, stream, start):
        results[folders[result["task"], result["variant"], result["seed"]]] = result
    report = write_report(output, [results[run.folder] for run in runs], tasks, variants,
                          profile=profile, seeds=sorted({run.seed for run in runs}), jobs=jobs,
                          threads=threads, device=str(resolved),
                          settings={run.task: run.config for run in runs},
                          wall_time_s=time.perf_counter() - start)
    print(f"ablate: wrote {output}/ablation.json, ablation.md, ablation.png "
          f"({format_duration(time.perf_counter() - start)})", file=stream, flush=True)
    return report


def _ignore_ctrl_c() -> None:
    """Worker processes leave Ctrl-C to the parent, which stops them all (no tracebacks)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _execute(pending: list[RunSpec], jobs: int, stream: TextIO, start: float):
    """Train ``pending`` (``jobs`` processes at once), yielding each result when it finishes
    and printing one progress line with the ETA of the whole ablation."""
    done: dict[str, list[float]] = {}
    total = len(pending)

    def report(result: dict) -> None:
        done.setdefault(result["task"], []).append(result["wall_time_s"])
        every = [t for times in done.values() for t in times]
        finished = len(every)
        left = [run.task for run in pending[finished:]]  # roughly: pending in order
        est = {task: sum(times) / len(times) for task, times in done.items()}
        mean = sum(every) / finished
        eta = sum(est.get(task, mean) for task in left) / jobs
        print(f"[{finished}/{total}] {result['task']} {result['variant']} seed {result['seed']}: "
              f"top-1 {result['accuracy']:.1f}% in {result['wall_time_s']:.0f} s (cpu "
              f"{result['cpu_time_s']:.0f} s, {result['train_img_per_s'] or 0:.0f} img/s) | "
              f"elapsed {format_duration(time.perf_counter() - start)}, eta "
              f"{format_duration(eta)}", file=stream, flush=True)

    if not pending:
        return
    try:
        if jobs == 1:
            for run in pending:
                result = train_one(run)
                report(result)
                yield result
            return
        with multiprocessing.get_context("spawn").Pool(jobs, _ignore_ctrl_c) as pool:
            try:
                for result in pool.imap_unordered(train_one, pending):
                    report(result)
                    yield result
            except BaseException:
                pool.terminate()
                raise
    except KeyboardInterrupt:
        print(f"ablate: interrupted; {sum(map(len, done.values()))} of {total} runs finished "
              "now; run the same command again to resume", file=stream, flush=True)
        raise
