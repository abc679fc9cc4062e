"""Run folders (grootvl.engine.run_folder and the loop): one run at a time, no run
overwritten without --overwrite, finished runs left alone, resumption refused with a reason
when it cannot be exact, stale temporary files removed, and no epoch record lost to a kill at
the worst moment (just before or after last.pth is replaced)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from grootvl.cli.main import main
from grootvl.engine.progress import read_jsonl
from grootvl.engine.run_folder import RunFolder
from test_cli_train import TINY, _env, data  # noqa: F401  (data: the image-folder fixture)

ONE_STEP = [*TINY, "--limit-train-steps", "1"]


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A run that trained all its 2 epochs."""
    out = tmp_path_factory.mktemp("finished")
    assert main(["train", "--data", str(data), "--output", str(out), *ONE_STEP]) == 0
    return out


def _copy(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _files(out) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _train(capsys, data, out, *extra) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["train", "--data", str(data), "--output", str(out), *ONE_STEP, *extra])
    err = capsys.readouterr().err
    if code:
        lines = [line for line in err.splitlines() if line.strip()]
        assert "error:" in lines[-1], err
    return code, err


def _epochs(out) -> list[int]:
    return [r["epoch"] for r in read_jsonl(out / "log.jsonl") if r["event"] == "epoch"]


def test_a_busy_folder_is_refused_naming_the_holders_pid(data, tmp_path, capsys):
    out = tmp_path / "busy"
    holder = RunFolder(out)
    holder.claim(resume=None)
    try:
        code, err = _train(capsys, data, out)
        assert code == 2 and f"is in use by another run (PID {os.getpid()} on" in err
    finally:
        holder.release()
    assert _train(capsys, data, out)[0] == 0


def test_a_new_run_into_a_run_folder_needs_overwrite(finished, data, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    before = _files(out)
    code, err = _train(capsys, data, out)
    assert code == 2 and "already holds a run" in err and "--overwrite" in err
    assert _files(out) == before
    assert _train(capsys, data, out, "--overwrite", "--resume", "auto")[0] == 2
    assert _train(capsys, data, out, "--overwrite")[0] == 0
    assert [r["event"] for r in read_jsonl(out / "log.jsonl")].count("start") == 1


def test_resuming_a_finished_run_changes_nothing_and_says_so(finished, data, tmp_path, capsys,
                                                             caplog):
    out = _copy(finished, tmp_path)
    before = _files(out)
    assert _train(capsys, data, out, "--resume", "auto")[0] == 0
    assert "has already trained all 2 epochs" in caplog.text and "nothing to do" in caplog.text
    assert _files(out) == before


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "1", "--resume", "auto"], "fewer than the 2 epochs"),
    (["--resume", "{out}/best.pth"], "holds the model's weights only"),
    (["--resume", "{out}/config.yaml"], "config.yaml is not a checkpoint"),
    (["--set", "model.kwargs={depth_multiplier: 2}", "--resume", "auto", "--epochs", "3"],
     "was trained with model.kwargs"),
])
def test_resumptions_that_cannot_be_exact_are_refused(finished, data, tmp_path, capsys, extra,
                                                      message):
    out = _copy(finished, tmp_path)
    before = _files(out)
    code, err = _train(capsys, data, out, *[e.replace("{out}", str(out)) for e in extra])
    assert code == 2 and message in err
    assert _files(out) == before


def test_resuming_on_renamed_classes_warns(finished, data, tmp_path, capsys, caplog):
    out = _copy(finished, tmp_path)
    other = shutil.copytree(data, tmp_path / "other")
    for split in ("train", "val"):
        os.rename(other / split / "ant", other / split / "aardvark")
    assert _train(capsys, other, out, "--resume", "auto", "--epochs", "3")[0] == 0
    assert "class folders of the data differ" in caplog.text and "ant -> aardvark" in caplog.text


def test_a_file_as_output_and_stale_temporaries(finished, data, tmp_path, capsys):
    code, err = _train(capsys, data, finished / "last.pth")
    assert code == 2 and "is a file, not a folder" in err
    out = _copy(finished, tmp_path)
    (out / ".last.pth.x1y2z3.tmp").write_bytes(b"half a checkpoint")
    folder = RunFolder(out)
    folder.claim(resume="auto")
    folder.release()
    assert not list(out.glob("*.tmp"))


def test_the_log_is_cut_back_to_the_snapshot(tmp_path):
    records = [{"event": "start"}, {"event": "train_step", "epoch": 0, "step": 2},
               {"event": "epoch", "epoch": 0}, {"event": "train_step", "epoch": 1, "step": 4},
               {"event": "epoch", "epoch": 1}, {"event": "train_step", "epoch": 2, "step": 6}]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"event": "trai')
    assert RunFolder(tmp_path).cut_log("log.jsonl", epoch=0, step=2) == 4  # 3 records, 1 torn
    assert read_jsonl(log) == records[:3]


# A grootvl process that SIGKILLs itself just before or after the first os.replace onto
# last.pth: the moments a snapshot and the log could disagree.
KILLER = """
import os, signal, sys
when = sys.argv.pop(1)
real = os.replace
def replace(src, dst, *args, **kwargs):
    last = os.path.basename(os.fspath(dst)) == "last.pth"
    if last and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst, *args, **kwargs)
    if last:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from grootvl.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_around_the_snapshot_loses_no_epoch_record(data, tmp_path, capsys, when):
    out = tmp_path / "killed"
    argv = ["train", "--data", str(data), "--output", str(out), *ONE_STEP]
    killed = subprocess.run([sys.executable, "-c", KILLER, when, *argv], env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _epochs(out) == [0]  # the record is on disk before the snapshot that claims it
    assert (out / "last.pth").exists() == (when == "after")
    assert main(argv[:1] + argv[1:] + ["--resume", "auto"]) == 0
    assert _epochs(out) == [0, 1]  # each epoch once: a record no snapshot claimed is redone
    assert not list(out.glob("*.tmp"))
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1


def test_divergence_is_reported_as_such(data, tmp_path, capsys):
    grootv = ["--model", "grootv_tiny", "--set", "model.kwargs={channels: 8, depths: [1, 1, 1, 1]}",
              "--set", "aug.mixup=0", "--set", "aug.cutmix=0"]
    code, err = _train(capsys, data, tmp_path / "nan", *grootv, "--lr", "1e30",
                       "--limit-train-steps", "3", "--epochs", "1")
    assert code == 2 and "training diverged" in err and "--lr" in err and "--weight-decay" in err
