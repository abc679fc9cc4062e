"""``grootvl ablate``: the report files and their structure, resumption after an interruption,
subsets, bad input, and every variant trained by the engine and rebuilt from its checkpoint
as ``grootvl eval`` rebuilds it."""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
import torch

from grootvl.cli.main import main
from grootvl.data import prepare_digits_folder
from grootvl.engine import loop
from grootvl.engine.snapshots import read_snapshot_meta
from grootvl.models.factory import create_model
from grootvl.models.weights import load_weights
from grootvl.tasks import load_config, train
from grootvl.tasks.ablation import VARIANTS
from grootvl.tasks.classification import eval_model_spec

# --quick, smaller still: a couple of seconds per run
TINY = ["--quick", "--jobs", "1", "--set", "generated.train_images=64",
        "--set", "generated.val_images=32", "--set", "sched.epochs=2"]



def _ablate(capsys, out, *args) -> tuple[int, str]:
    code = main(["ablate", "--output", str(out), *TINY, *args])
    return code, capsys.readouterr().err


def _result_files(out):
    return sorted(out.glob("runs/*/*/seed*/result.json"))


def test_quick_subset_writes_the_three_files_with_every_variant_task_and_seed(tmp_path, capsys):
    out = tmp_path / "ablation"
    code, err = _ablate(capsys, out, "--variants", "raster,tree", "--seeds", "2")
    assert code == 0, err
    assert "[8/8]" in err and "eta" in err
    report = json.loads((out / "ablation.json").read_text())
    assert report["tasks"] == ["digits", "pathfinder"]
    assert list(report["variants"]) == ["tree", "raster"]  # the canonical order
    assert report["seeds"] == [0, 1] and report["profile"] == "quick"
    assert "meaningless" in report["note"]
    for task in report["tasks"]:
        assert report["settings"][task]["generated"]["name"] == task
        assert "topology" not in report["settings"][task]["model"]["kwargs"]
        for name, options in report["variants"].items():
            row = report["results"][task][name]
            assert row["seeds"] == [0, 1] and len(row["accuracy"]) == 2
            assert all(0 <= a <= 100 for a in row["accuracy"])
            assert row["mean"] == pytest.approx(statistics.fmean(row["accuracy"]))
            assert row["std"] == pytest.approx(statistics.stdev(row["accuracy"]))
            assert row["params"] > 0 and row["gflops"] > 0 and row["train_img_per_s"] > 0
            assert row["classes"] == (10 if task == "digits" else 2)
            assert row["model"]["kwargs"]["topology"] == options["topology"]
            assert all(t > 0 for t in row["wall_time_s"] + row["cpu_time_s"])
    tree, raster = (report["results"]["digits"][v]["tree_gflops"] for v in ("tree", "raster"))
    assert tree["cost"] > 0 and raster["cost"] == 0 and tree["scan"] == raster["scan"]
    table = (out / "ablation.md").read_text()
    assert "meaningless" in table and "| variant |" in table
    assert "| cost | digits | pathfinder | params (k) |" in table  # tasks as columns
    for name in ("tree", "raster"):
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        cells = [c.strip() for c in row.split("|")[1:-1]]
        digits = report["results"]["digits"][name]
        assert cells[4] == f"{digits['mean']:.1f} ± {digits['std']:.1f}"
    png = (out / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # rerunning finds everything finished and only rewrites the report
    stamps = [p.stat().st_mtime_ns for p in _result_files(out)]
    code, err = _ablate(capsys, out, "--variants", "raster,tree", "--seeds", "2")
    assert code == 0 and "8 runs" in err and "8 finished before" in err
    assert [p.stat().st_mtime_ns for p in _result_files(out)] == stamps


@pytest.mark.slow
def test_full_quick_profile_covers_every_variant_and_task(tmp_path, capsys):
    out = tmp_path / "ablation"
    assert main(["ablate", "--quick", "--jobs", "1", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "18 runs (2 task(s) x 9 variant(s) x 1 seed(s))" in err and "[18/18]" in err
    report = json.loads((out / "ablation.json").read_text())
    assert list(report["variants"]) == list(VARIANTS)
    for task in ("digits", "pathfinder"):
        assert list(report["results"][task]) == list(VARIANTS)
        assert all(row["std"] is None and row["gflops"] > 0
                   for row in report["results"][task].values())
    table = (out / "ablation.md").read_text()
    assert all(f"| `{name}` |" in table for name in VARIANTS)
    assert (out / "ablation.png").stat().st_size > 10_000


def test_an_interrupted_ablation_resumes_without_retraining_finished_runs(tmp_path, capsys,
                                                                          monkeypatch):
    out = tmp_path / "ablation"
    real_epoch, calls = loop._train_epoch, []

    def interrupt_second_run_in_its_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # run 1: epochs 0, 1; run 2: epoch 0 saved, then Ctrl-C
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_epoch", interrupt_second_run_in_its_second_epoch)
    code, err = _ablate(capsys, out, "--tasks", "digits", "--variants", "tree,cross")
    assert code == 130 and "run the same command again to resume" in err
    first, second = (out / "runs/digits" / v / "seed0" for v in ("tree", "cross"))
    assert (first / "result.json").is_file() and not (second / "result.json").exists()
    assert read_snapshot_meta(second / "last.pth")["epoch"] == 0
    stamp = (first / "result.json").stat().st_mtime_ns

    monkeypatch.setattr(loop, "_train_epoch", real_epoch)
    code, err = _ablate(capsys, out, "--tasks", "digits", "--variants", "tree,cross")
    assert code == 0 and "1 finished before" in err and "[1/1] digits cross" in err, err
    assert (first / "result.json").stat().st_mtime_ns == stamp
    resumed = json.loads((second / "result.json").read_text())
    assert resumed["resumed_from_epoch"] == 1
    epochs = [json.loads(line)["epoch"] for line in (second / "log.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "epoch"]
    assert epochs == [0, 1]  # the second epoch trained once, after the resume

    # other settings in the same folder are refused, not mixed into the report
    code, err = _ablate(capsys, out, "--tasks", "digits", "--variants", "tree",
                        "--set", "optim.base_lr=1e-3")
    assert code == 2 and "trained with other settings" in err and "optim.base_lr" in err


@pytest.mark.slow
def test_ctrl_c_stops_parallel_jobs_and_a_rerun_keeps_what_finished(tmp_path, capsys):
    out = tmp_path / "ablation"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, "-m", "grootvl", "ablate", "--output", str(out), *TINY,
           "--jobs", "2", "--tasks", "digits", "--variants", "tree,raster,cross"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not _result_files(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    finished = _result_files(out)
    assert proc.returncode == 130 and "interrupted" in err, err
    assert 1 <= len(finished) < 3
    stamps = [p.stat().st_mtime_ns for p in finished]
    time.sleep(1)  # no worker is left to write anything
    assert [p.stat().st_mtime_ns for p in _result_files(out)] == stamps

    code, err = _ablate(capsys, out, "--tasks", "digits", "--variants", "tree,raster,cross")
    assert code == 0 and f"{len(finished)} finished before" in err
    assert [p.stat().st_mtime_ns for p in finished] == stamps
    assert len(_result_files(out)) == 3


@pytest.mark.parametrize("args, expected", [
    (["--variants", "tree,chain"], "--variants 'tree,chain': unknown name(s) chain; choose from "
                                   "tree, raster, cross, random, tree-first"),
    (["--tasks", "imagenet"], "--tasks 'imagenet': unknown name(s) imagenet; choose from digits, "
                              "pathfinder"),
    (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N (got 'gpu')"),
    (["--seeds", "1000"], "--seeds 1000: must be a positive integer of at most 100"),
    (["--threads", "100000"], "--threads 100000: must be a positive integer of at most"),
    (["--set", "sched.epochs=0"], "sched.epochs = 0 (from --set sched.epochs=0)"),
    (["--set", "pathfinder.generated.train_images=-3"],
     "task pathfinder: generated.train_images = -3 (from --set generated.train_images=-3)"),
    (["--set", "model.kwargs.topology=raster"], "the variants set model.kwargs.topology"),
    (["--set", "digits.generated.options={max_turn: 5}"], "task digits: generated.options = {'max_turn': 5}: the digits take no options"),
    (["--set", "digits.generated.train_images=5000"], "the digits have 1437 such images"),
])
def test_bad_input_is_one_line_naming_the_option(tmp_path, capsys, args, expected):
    code, err = _ablate(capsys, tmp_path / "out", *args)
    assert code == 2
    assert err.startswith("grootvl ablate: error: ") and expected in err, err
    assert err.count("\n") <= 2  # the error, and at most the start line before it


def test_output_file_seeds_and_profiles_are_checked(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, err = _ablate(capsys, tmp_path / "file")
    assert code == 2 and "--output" in err and "is a file" in err
    for args, message in ((["--seeds", "0"], "argument --seeds: 0 must be a positive integer"),
                          (["--jobs", "x"], "argument --jobs: 'x' is not an integer"),
                          (["--quick", "--scale"], "not allowed with argument")):
        with pytest.raises(SystemExit) as exc:
            main(["ablate", *args])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_print_config_shows_each_tasks_recipe(capsys):
    assert main(["ablate", "--scale", "--print-config",
                 "--set", "sched.epochs=7", "--set", "digits.sched.epochs=9"]) == 0
    digits, pathfinder = capsys.readouterr().out.split("# ---- task ")[1:]
    assert digits.startswith("digits (profile scale") and "name: digits" in digits
    assert pathfinder.startswith("pathfinder (profile scale") and "name: pathfinder" in pathfinder
    assert "  epochs: 9  #" in digits and "  epochs: 7  #" in pathfinder


# ---------------------------------------------- every variant, through the engine and back

@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    return prepare_digits_folder(tmp_path_factory.mktemp("digits"), size=32)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_and_is_rebuilt_from_its_checkpoint(variant, digits_folder,
                                                                  tmp_path, capsys):
    options = VARIANTS[variant]
    cfg = load_config("ablate_digits_quick", [
        "generated.train_images=96", "generated.val_images=null", "sched.epochs=1",
        "train.device=cpu",
        *(f"model.kwargs.{k}={v}" for k, v in options.items())])
    summary = train(cfg, tmp_path)
    assert summary["last"]["train_loss"] > 0
    # rebuilt as `grootvl eval` and `visualize` rebuild it: model.name + model.kwargs
    meta = read_snapshot_meta(tmp_path / "last.pth")
    name, kwargs = eval_model_spec(meta, None, tmp_path / "last.pth")
    model = create_model(name, len(meta["classes"]), 1, **kwargs)
    load_weights(model, tmp_path / "last.pth", model_name=name)
    for level in model.levels:
        for block in level.blocks:
            layer = block.TreeSSM
            assert {k: getattr(layer, k) for k in options} == options
    # `visualize` draws it without being told the architecture, input size or channels
    digit = next(digits_folder.glob("val/3/*.png"))
    assert main(["visualize", "--checkpoint", str(tmp_path / "last.pth"),
                 "--output", str(tmp_path / "vis"), "--image", str(digit)]) == 0
    assert len(list((tmp_path / "vis").glob("*.png"))) == 1
    # and evaluates on the digits written as a folder to what training measured in memory
    assert main(["eval", "--checkpoint", str(tmp_path / "last.pth"), "--data", str(digits_folder),
                 "--workers", "0", "--device", "cpu", "--progress", "none"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    recorded = summary["last"]
    assert result["count"] == recorded["val_count"] == 360
    if options["topology"] == "random":  # new random trees: close, not equal
        assert abs(result["top1"] - recorded["val_top1"]) < 10
    else:
        assert result["top1"] == pytest.approx(recorded["val_top1"])
        assert result["loss"] == pytest.approx(recorded["val_loss"], rel=1e-4)
