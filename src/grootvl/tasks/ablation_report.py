"""The report of ``grootvl ablate``: ``ablation.json``, ``ablation.md`` and ``ablation.png``.

Built from the per-run results of :func:`grootvl.tasks.ablation.train_one`. Accuracy is
top-1 (percent) on the held-out images after the last epoch (no selection on them), as
mean and sample standard deviation (n - 1) over seeds; the standard deviation is null for
one seed. Parameters and FLOPs (``grootvl.flops``: fvcore's count, tree work estimated
apart) are per model and image; training speed is images per second of the training
epochs, measured while ``jobs`` runs shared the machine.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ..engine.snapshots import atomic_write_text

__all__ = ["summarize", "write_report"]

JSON_FILE, MARKDOWN_FILE, FIGURE_FILE = "ablation.json", "ablation.md", "ablation.png"


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(results: list[dict], tasks: list[str], variants: list[str]) -> dict:
    """``{task: {variant: summary}}`` of per-run ``results`` (every run finished)."""
    table: dict = {}
    for task in tasks:
        table[task] = {}
        for variant in variants:
            runs = sorted((r for r in results if r["task"] == task and r["variant"] == variant),
                          key=lambda r: r["seed"])
            accuracy = [r["accuracy"] for r in runs]
            mean, std = _mean_std(accuracy)
            speeds = [r["train_img_per_s"] for r in runs if r["train_img_per_s"]]
            first = runs[0]
            table[task][variant] = {
                "seeds": [r["seed"] for r in runs], "accuracy": accuracy,
                "mean": mean, "std": std,
                "best_accuracy": [r["best_accuracy"] for r in runs],
                "params": first["params"], "gflops": first["gflops"],
                "tree_gflops": first["tree_gflops"], "mst_comparisons": first["mst_comparisons"],
                "train_img_per_s": statistics.fmean(speeds) if speeds else None,
                "wall_time_s": [r["wall_time_s"] for r in runs],
                "cpu_time_s": [r["cpu_time_s"] for r in runs],
                "resumed_from_epoch": [r["resumed_from_epoch"] for r in runs],
                "classes": first["classes"], "val_images": first["val_images"],
                "model": first["model"],
            }
    return table


def write_report(output: str | Path, results: list[dict], tasks: list[str], variants: list[str],
                 *, profile: str, seeds: list[int], jobs: int, threads: int | None, device: str,
                 settings: dict, wall_time_s: float) -> dict:
    """Write the three report files into ``output``; returns the ``ablation.json`` content."""
    from .ablation import PROFILES, VARIANT_KEYS, VARIANT_NOTES, VARIANTS

    output = Path(output)
    common = {}
    for task, config in settings.items():  # a task's recipe: its config minus what varies
        config = json.loads(json.dumps(config))
        for key in VARIANT_KEYS:
            config["model"]["kwargs"].pop(key.rsplit(".", 1)[1], None)
        config["train"].pop("seed", None)
        common[task] = config
    report = {
        "profile": profile, "note": PROFILES[profile].note,
        "metric": "top-1 accuracy (%) on held-out images after the last epoch; mean and "
                  "sample std over seeds",
        "tasks": tasks, "seeds": seeds,
        "variants": {name: {**VARIANTS[name], "description": VARIANT_NOTES[name]}
                     for name in variants},
        "jobs": jobs, "threads_per_job": threads, "device": device,
        "wall_time_s": round(wall_time_s, 1),
        "run_wall_time_s": round(sum(r["wall_time_s"] for r in results), 1),
        "run_cpu_time_s": round(sum(r["cpu_time_s"] for r in results), 1),
        "results": summarize(results, tasks, variants),
        "settings": common,
    }
    atomic_write_text(json.dumps(report, indent=1), output / JSON_FILE)
    atomic_write_text(markdown(report), output / MARKDOWN_FILE)
    plot(report, output / FIGURE_FILE)
    return report


def _cell(summary: dict) -> str:
    if summary["std"] is None:
        return f"{summary['mean']:.1f}"
    return f"{summary['mean']:.1f} ± {summary['std']:.1f}"


def markdown(report: dict) -> str:
    """The table: variants as rows, tasks as columns (mean ± std), then the costs."""
    tasks, results = report["tasks"], report["results"]
    per_task = " / ".join(tasks)
    lines = ["# Scan-topology ablation (`grootvl ablate`)", ""]
    if report["note"]:
        lines += [f"**{report['note']}**", ""]
    threads = report["threads_per_job"]
    each = f" with {threads} thread(s) each" if threads else ""
    lines += [f"Profile `{report['profile']}`, seeds {', '.join(map(str, report['seeds']))}; "
              f"{report['metric']}. {report['jobs']} run(s) at once on {report['device']}{each}"
              f"; wall time {report['wall_time_s'] / 60:.1f} min for the runs trained now. "
              f"Params, MFLOPs (fvcore count, tree work apart), tree MFLOPs (edge costs + "
              f"scans) and training img/s per task: {per_task}.", ""]
    head = ["variant", "topology", "root", "cost", *tasks, "params (k)", "MFLOPs",
            "tree MFLOPs", "train img/s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, options in report["variants"].items():
        cells = [f"`{name}`", options["topology"], options["root"],
                 options["tree_cost"] if options["topology"] == "tree" else "-"]
        cells += [_cell(results[task][name]) for task in tasks]
        rows = [results[task][name] for task in tasks]
        cells += [" / ".join(f"{r['params'] / 1e3:.0f}" for r in rows),
                  " / ".join(f"{r['gflops'] * 1e3:.3g}" for r in rows),
                  " / ".join(f"{sum(r['tree_gflops'].values()) * 1e3:.3g}" for r in rows),
                  " / ".join(f"{r['train_img_per_s']:.0f}" if r["train_img_per_s"] else "-"
                             for r in rows)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Variants:", ""]
    lines += [f"- `{name}`: {options['description']}" for name, options in report["variants"].items()]
    lines += ["", "Per-run numbers, recipes and settings: ablation.json.", ""]
    return "\n".join(lines)


def plot(report: dict, path: str | Path) -> None:
    """Grouped bars: one group per task, one bar per variant, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, variants = report["tasks"], list(report["variants"])
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(tasks) * (1 + 0.25 * len(variants)), 4.2))
    colors = plt.get_cmap("tab10")
    for i, name in enumerate(variants):
        rows = [report["results"][task][name] for task in tasks]
        xs = [t + (i - (len(variants) - 1) / 2) * width for t in range(len(tasks))]
        errors = [r["std"] or 0.0 for r in rows]
        ax.bar(xs, [r["mean"] for r in rows], width, yerr=errors if any(errors) else None,
               capsize=2, label=name, color=colors(i % 10), edgecolor="black", linewidth=0.4)
    for t, task in enumerate(tasks):
        chance = 100.0 / report["results"][task][variants[0]]["classes"]
        ax.hlines(chance, t - 0.45, t + 0.45, colors="black", linestyles="dashed", linewidth=1,
                  zorder=3, label="chance" if t == 0 else None)
    means = [report["results"][task][name]["mean"] for task in tasks for name in variants]
    low = min(min(means), min(100.0 / report["results"][task][variants[0]]["classes"]
                              for task in tasks))
    ax.set_ylim(max(0.0, math.floor(low / 10) * 10 - 10), 100)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("held-out top-1 accuracy (%)")
    seeds = len(report["seeds"])
    title = (f"Scan topologies: mean ± std over {seeds} seeds" if seeds > 1
             else "Scan topologies: one seed")
    ax.set_title(title + (" (--quick: meaningless numbers)" if report["note"] else ""),
                 fontsize=10)
    ax.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
