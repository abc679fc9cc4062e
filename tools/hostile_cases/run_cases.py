"""Run-folder attacks: a second run into a busy or finished folder, resuming finished runs,
and ``kill -9`` at random times and at the worst moments (just after ``last.pth`` is
replaced, just before), each followed by ``--resume auto`` and three checks: every epoch has
its ``log.jsonl`` record, no temporary file is left behind, and the final weights equal
those of an uninterrupted run.

The kills run real ``grootvl`` processes (controller side, stdlib only); the rest run in the
worker like other CLI cases.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from . import Case
from .argv import SEG_TRAIN, TRAIN, build, fill

E, OK, WARN = "error", "ok", "warn"
KILL_EPOCHS = 3

# A grootvl process that SIGKILLs itself right before or after the Nth os.replace/os.rename
# onto a file named TARGET (HOSTILE_KILL_AT="TARGET:before|after:N"): the worst moments for
# a run folder, hit exactly rather than by chance.
WRAPPER = r"""
import os, signal, sys
spec = os.environ.get("HOSTILE_KILL_AT")
if spec:
    target, when, nth = spec.split(":")
    nth, seen = int(nth), [0]
    def wrap(real):
        def replace(src, dst, *args, **kwargs):
            hit = os.path.basename(os.fspath(dst)) == target
            if hit:
                seen[0] += 1
                if seen[0] == nth and when == "before":
                    os.kill(os.getpid(), signal.SIGKILL)
            result = real(src, dst, *args, **kwargs)
            if hit and seen[0] == nth and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return replace
    os.replace, os.rename = wrap(os.replace), wrap(os.rename)
from grootvl.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def cases(kills: int, seed: int) -> list[Case]:
    def cli(name, expect, replace=None, extra=(), prep="copy_run", check="", names="", **kw):
        return Case(id=f"runs/{name}", area="run-folders", kind="cli", expect=expect,
                    argv=build(TRAIN, replace, extra=extra), prep=prep, func=check, names=names,
                    kwargs=kw)

    out = [
        cli("new-run-into-finished", E, names="output|resume|overwrite|exist", lost_if_ok=True),
        cli("overwrite-finished", OK, extra=["--overwrite"], check="check_fresh_run"),
        cli("resume-auto-finished", OK, {"--epochs": "2", "--resume": "auto"},
            check="check_summary_unchanged"),
        cli("resume-fewer-epochs", E, {"--epochs": "1", "--resume": "auto"}, names="epoch"),
        cli("resume-other-classes", WARN, {"--epochs": "3", "--resume": "auto",
                                           "--data": "{other_data}"},
            names=r"class(es)?\b.*(differ|other|mismatch|changed|renamed|not)|warning.*class"),
        cli("resume-best", E, {"--epochs": "3", "--resume": "{out}/best.pth"},
            names="best.pth|resume"),
        cli("resume-config-yaml", E, {"--epochs": "3", "--resume": "{out}/config.yaml"},
            names="config.yaml"),
        cli("resume-missing", E, {"--resume": "{case}/none.pth"}, prep="", names="none.pth"),
        cli("resume-auto-empty", OK, {"--resume": "auto"}, prep="", check="check_train_ok"),
        cli("stale-tmp-removed", OK, {"--epochs": "3", "--resume": "auto"}, prep="stale_tmp",
            check="check_no_tmp"),
        cli("resume-other-kwargs", E, {"--epochs": "3", "--resume": "auto",
                                       "--set": "model.kwargs={channels: 16, depths: [1, 1, 1, 1]}"},
            names="kwargs|fit|model"),
        cli("output=file", E, {"--output": "{img_ok}"}, prep="", names="output|ok.png"),
    ]
    for name in ("zero.pth", "garbage.pth", "truncated.pth", "evil.pth", "nan.pth",
                 "config_str.pth"):
        out.append(cli(f"resume={name}", E, {"--resume": "{ckpt}/" + name}, prep="",
                       names=name.replace(".", r"\.") + ("|nan|finite" if "nan" in name else "")))

    def proc(name, func, expect=OK, timeout=900.0, **kwargs):
        return Case(id=f"runs/{name}", area="run-folders", kind="proc", expect=expect,
                    func=func, kwargs=kwargs, timeout=timeout)

    out.append(proc("concurrent-runs", "concurrent_runs", E))
    rng = random.Random(seed)
    for k in range(kills):
        out.append(proc(f"kill-random-{k}", "kill_and_resume", fraction=round(rng.random(), 3)))
    for when, nth in (("after", 1), ("after", 2), ("before", 2)):
        out.append(proc(f"kill-{when}-last.pth-replace-{nth}", "kill_and_resume",
                        at=f"last.pth:{when}:{nth}"))
    out.append(proc("kill-after-best.pth-replace-1", "kill_and_resume", at="best.pth:after:1"))
    out.append(proc("seg-kill-after-last.pth-replace-1", "seg_kill_and_resume",
                    at="last.pth:after:1"))
    return out


# ----------------------------------------------------------------------------- processes

class ProcContext:
    """What a scenario needs from the controller: how to start grootvl, the fixtures, a
    folder of its own, and the worker (for comparing checkpoints)."""

    def __init__(self, python: str, env: dict, fixtures: dict, root: Path, call):
        self.python, self.env, self.fx, self.root, self.call = python, env, fixtures, root, call
        self._reference: tuple[Path, float] | None = None

    def fill(self, argv: list[str], out: Path, case_dir: Path) -> list[str]:
        values = {**self.fx, "out": str(out), "case": str(case_dir)}
        return [fill(a, values) for a in argv]

    def start(self, argv: list[str], log_dir: Path, name: str, kill_at: str = "") -> subprocess.Popen:
        env = dict(self.env)
        if kill_at:
            env["HOSTILE_KILL_AT"] = kill_at
        log_dir.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [self.python, "-c", WRAPPER, *argv], env=env, cwd=log_dir,
            stdout=open(log_dir / f"{name}.out", "w"), stderr=open(log_dir / f"{name}.err", "w"),
            start_new_session=True)

    def reference(self) -> tuple[Path, float]:
        """An uninterrupted run with the kill cases' settings: (its last.pth, its run time)."""
        if self._reference is None:
            out = self.root / "kill_reference"
            proc = self.start(self.fill(_kill_argv(), out, self.root), self.root, "kill_reference")
            if proc.wait(timeout=900) != 0:
                raise RuntimeError(f"the uninterrupted reference run failed; see {self.root}")
            summary = json.loads((out / "summary.json").read_text())
            self._reference = (out / "last.pth", float(summary.get("run_time_s") or 10.0))
        return self._reference


def _kill_argv(*extra: str) -> list[str]:
    return build(TRAIN, {"--epochs": str(KILL_EPOCHS), "--limit-train-steps": "2"}, extra=extra)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _epoch_records(out: Path) -> list[int]:
    path = out / "log.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "epoch":
            records.append(record.get("epoch"))
    return records


def _stderr(log_dir: Path, name: str) -> str:
    path = log_dir / f"{name}.err"
    return path.read_text(errors="replace") if path.is_file() else ""


def _verify(ctx: ProcContext, out: Path, epochs: int, reference: Path | None) -> dict:
    missing = sorted(set(range(epochs)) - set(_epoch_records(out)))
    problems = []
    if missing:
        problems.append(f"log.jsonl lacks the record of epoch(s) {missing}")
    stale = sorted(p.name for p in out.glob("*.tmp"))
    if stale:
        problems.append(f"stale temporary files {stale}")
    if reference is not None:
        same = ctx.call("compare_checkpoints", a=str(out / "last.pth"), b=str(reference))
        if not same.get("equal"):
            problems.append(f"final weights differ from an uninterrupted run ({same})")
    if problems:
        return {"outcome": "data_lost", "detail": "; ".join(problems)}
    return {"outcome": "ok", "detail": f"all {epochs} epoch records, no temporary file"
            + (", same final weights" if reference is not None else "")}


def _resume(ctx, case_dir: Path, out: Path, argv: list[str]) -> dict | None:
    proc = ctx.start(ctx.fill(argv + ["--resume", "auto"], out, case_dir), case_dir, "resume")
    try:
        rc = proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return {"outcome": "hang_oom", "detail": "the resumed run did not finish in 900 s"}
    if rc != 0:
        err = _stderr(case_dir, "resume")
        kind = "traceback" if "Traceback (most recent call last)" in err else "data_lost"
        return {"outcome": kind, "detail": f"--resume auto failed ({rc}): {err.strip()[-300:]}"}
    return None


def kill_and_resume(ctx: ProcContext, case_dir: Path, fraction: float | None = None,
                    at: str = "") -> dict:
    reference, run_time = ctx.reference()
    out = case_dir / "out"
    argv = _kill_argv()
    proc = ctx.start(ctx.fill(argv, out, case_dir), case_dir, "killed", kill_at=at)
    note = ""
    if at:
        rc = proc.wait(timeout=900)
        note = f"killed at {at}" if rc == -signal.SIGKILL else f"no kill happened (exit {rc})"
    elif _wait_for(out / "log.jsonl", proc, timeout=600):
        time.sleep(fraction * run_time * 1.2)
        alive = proc.poll() is None
        _kill_group(proc)
        note = (f"killed {fraction * run_time * 1.2:.2f} s into training" if alive
                else "the run finished before the kill")
    else:
        _kill_group(proc)
        note = "killed before training started"
    result = _resume(ctx, case_dir, out, argv) or _verify(ctx, out, KILL_EPOCHS, reference)
    result["detail"] = f"{note}; {result['detail']}"
    return result


def seg_kill_and_resume(ctx: ProcContext, case_dir: Path, at: str) -> dict:
    out = case_dir / "out"
    argv = build(SEG_TRAIN, {"--epochs": "2"})
    proc = ctx.start(ctx.fill(argv, out, case_dir), case_dir, "killed", kill_at=at)
    rc = proc.wait(timeout=900)
    note = f"killed at {at}" if rc == -signal.SIGKILL else f"no kill happened (exit {rc})"
    result = _resume(ctx, case_dir, out, argv) or _verify(ctx, out, 2, None)
    result["detail"] = f"{note}; {result['detail']}"
    return result


def concurrent_runs(ctx: ProcContext, case_dir: Path) -> dict:
    """A second run into a folder a live run is writing must refuse, naming the holder."""
    out = case_dir / "out"
    first = ctx.start(ctx.fill(build(TRAIN, {"--epochs": "400"}), out, case_dir), case_dir, "first")
    try:
        if not _wait_for(out / "log.jsonl", first, timeout=600):
            return {"outcome": "n/a", "detail": "the first run never started training: "
                    + _stderr(case_dir, "first")[-300:]}
        second = ctx.start(ctx.fill(build(TRAIN, {"--epochs": "2"}), out, case_dir), case_dir,
                           "second")
        try:
            rc = second.wait(timeout=600)
        except subprocess.TimeoutExpired:
            _kill_group(second)
            return {"outcome": "hang_oom", "detail": "the second run did not end in 600 s"}
        first_alive = first.poll() is None
    finally:
        _kill_group(first)
    err = _stderr(case_dir, "second")
    if rc == 0:
        if first_alive:
            return {"outcome": "data_lost", "detail": "both runs wrote into one --output at once"}
        return {"outcome": "n/a", "detail": "the first run ended before the second started"}
    return {"outcome": "stderr", "rc": rc, "stderr": err, "names": "lock|running|busy|pid|in use"}
