#!/usr/bin/env python3
"""Hostile-input harness: attack a grootvl source tree with ~700 bad inputs and kill -9s,
and count what happens.

    python tools/hostile.py --src /path/to/checkout/src [--cases 'train/*,set/*'] \
        [--out results.json] [--kills 10] [--list]

Every case states its correct outcome (see ``tools/hostile_cases/__init__.py``); the table
counts, per area: attempts, clean errors, correct successes, vague errors (no traceback but
a multi-line message or one that does not name the problem), tracebacks, silent results
(exit 0 on invalid input, a NaN / wrong / clamped result, code run from a checkpoint),
refusals of valid input, data lost (a kill -9 that loses a log record or the final weights,
stale temporary files) and hangs/OOM (per-case time limit; the worker's address space is
capped). Cases run one at a time: in-process in one worker (which imports the attacked
grootvl once) where possible, as real processes for kills and concurrency.

This script is stdlib-only; the worker runs with ``--python`` (default: the project's venv)
and ``--src`` first on PYTHONPATH. A developer tool: not part of the package.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from hostile_cases import FAIL_OUTCOMES, OUTCOMES, PASS_OUTCOMES, Case, build_cases  # noqa: E402
from hostile_cases import run_cases  # noqa: E402

DEFAULT_PYTHON = str(TOOLS.parent / ".venv" / "bin" / "python")  # the project's venv (make venv)
TRACEBACK = "Traceback (most recent call last)"
COLUMNS = [("attempts", "attempts"), ("clean_error", "clean err"), ("ok", "ok"),
           ("vague_error", "vague err"), ("traceback", "traceback"), ("silent", "silent"),
           ("refused", "refused"), ("data_lost", "data lost"), ("hang_oom", "hang/OOM"),
           ("n/a", "n/a")]


class WorkerDied(Exception):
    pass


class Worker:
    """The worker process: JSON lines in, JSON lines out, one request at a time."""

    def __init__(self, python: str, env: dict, log: Path):
        self.python, self.env, self.log = python, env, log
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.python, "-m", "hostile_cases.worker"], env=self.env, cwd=TOOLS,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.log, "a"),
            start_new_session=True, text=True, bufsize=1)
        ready = self._read(900)
        if not ready.get("ready"):
            raise WorkerDied(f"worker did not start: {ready}")

    def request(self, payload: dict, timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(json.dumps(payload) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def _read(self, timeout: float) -> dict:
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            self.stop()
            raise TimeoutError
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            raise WorkerDied(f"worker exited with {code}")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None


# ----------------------------------------------------------------------------- classifying

def error_message_quality(stderr: str, names: str) -> tuple[bool, str]:
    """(clean, why not): the last non-empty stderr line must be the one ``error:`` line and
    it must match ``names``."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if "error:" in line]
    if not errors:
        return False, "no 'error:' line on stderr"
    message = lines[errors[-1]]
    if errors[-1] != len(lines) - 1:
        return False, f"multi-line error message: {message[:160]!r} + {len(lines) - 1 - errors[-1]} lines"
    if names and not re.search(names, message, re.I):
        return False, f"message does not name /{names}/: {message[:200]!r}"
    return True, message[:200]


def classify_cli(case: Case, rc: int, stderr: str, exc: dict | None, silent=None,
                 data_lost=None) -> tuple[str, str]:
    if exc and exc.get("oom") or re.search(r"MemoryError|can't allocate memory", stderr[-2000:]):
        return "hang_oom", _last_line(stderr)
    if exc or TRACEBACK in stderr:
        where = f" at {exc['where']}" if exc and exc.get("where") else ""
        return "traceback", f"{exc['type'] if exc else ''}{where}: {_last_line(stderr)}"
    if data_lost:
        return "data_lost", data_lost
    if rc == 0:
        if silent:
            return "silent", silent
        if case.expect == "error":
            if case.kwargs.get("lost_if_ok"):
                return "data_lost", "exit 0: the existing run was overwritten"
            return "silent", "exit 0 on invalid input"
        if case.expect == "warn" and not re.search(case.names, stderr, re.I):
            return "silent", f"exit 0 with no warning naming /{case.names}/"
        return "ok", ""
    clean, why = error_message_quality(stderr, case.names)
    if case.expect == "ok":
        return "refused", why
    return ("clean_error", why) if clean else ("vague_error", why)


def classify_py(case: Case, response: dict) -> tuple[str, str]:
    exc = response.get("exc")
    if response.get("silent"):
        return "silent", response["silent"]
    if exc is None:
        if case.expect == "error":
            return "silent", f"no error raised ({response.get('result')})"
        return "ok", response.get("result") or ""
    detail = f"{exc['type']} at {exc['where']}: {exc['msg'][:200]}"
    if exc.get("oom"):
        return "hang_oom", detail
    if not exc.get("in_src"):
        return "n/a", f"harness error: {detail}"
    allowed = any(name in case.allow for name in exc["mro"])
    if not allowed:
        return "traceback", detail
    if case.expect == "ok":
        return "refused", detail
    if case.names and not re.search(case.names, exc["msg"], re.I):
        return "vague_error", f"does not name /{case.names}/: {detail}"
    return "clean_error", detail


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:240] if lines else ""


# ---------------------------------------------------------------------------------- running

def select(cases: list[Case], patterns: str | None) -> list[Case]:
    if not patterns:
        return cases
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]

    def match(case_id: str) -> bool:
        return any(fnmatch.fnmatchcase(case_id, p) if any(c in p for c in "*?[") else p in case_id
                   for p in wanted)
    return [c for c in cases if match(c.id)]


def run_one(case: Case, worker: Worker, ctx, fixtures: dict, work: Path) -> dict:
    case_dir = work / "cases" / re.sub(r"[^A-Za-z0-9_.=-]+", "_", case.id)
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    start = time.monotonic()
    tail = ""
    try:
        if case.kind == "proc":
            result = getattr(run_cases, case.func)(ctx, case_dir, **case.kwargs)
            tail = result.get("stderr", "")[-800:]
            if result["outcome"] == "stderr":
                outcome, detail = classify_cli(case, result["rc"], result["stderr"], None)
                if outcome == "vague_error":
                    case.names = result["names"]
            else:
                outcome, detail = result["outcome"], result["detail"]
        else:
            payload = {"op": "case", **case.request(), "case_dir": str(case_dir),
                       "fixtures": fixtures}
            response = worker.request(payload, case.timeout)
            tail = (response.get("stderr") or "")[-800:]
            if response.get("unavailable"):
                outcome, detail = "n/a", response["unavailable"]
            elif case.kind == "cli":
                if "rc" not in response:  # the prep step or a check failed inside the harness
                    outcome, detail = ("silent", response["silent"]) if response.get("silent") \
                        else ("data_lost", response["data_lost"]) if response.get("data_lost") \
                        else ("n/a", f"harness: {response}")
                else:
                    outcome, detail = classify_cli(case, response["rc"], response["stderr"],
                                                   response.get("exc"), response.get("silent"),
                                                   response.get("data_lost"))
            else:
                outcome, detail = classify_py(case, response)
            if response.get("rss_mb", 0) > 3000:
                worker.stop()  # fresh worker: keep memory (and leaks) bounded
    except TimeoutError:
        outcome, detail = "hang_oom", f"no result within {case.timeout:.0f} s"
    except WorkerDied as exc:
        outcome, detail = "hang_oom", f"the worker died ({exc}): killed for memory?"
    except subprocess.TimeoutExpired as exc:
        outcome, detail = "hang_oom", f"timeout: {exc}"
    markers = list(Path(fixtures.get("markers", work / "markers")).glob("*"))
    if markers:
        outcome, detail = "silent", f"CODE EXECUTED from a checkpoint: {[m.name for m in markers]}"
        for marker in markers:
            marker.unlink()
    return {"id": case.id, "area": case.area, "kind": case.kind, "expect": case.expect,
            "outcome": outcome, "detail": detail, "seconds": round(time.monotonic() - start, 2),
            "argv": case.argv or None, "stderr_tail": tail}


def table(results: list[dict]) -> str:
    rows = defaultdict(Counter)
    for r in results:
        rows[r["area"]][r["outcome"]] += 1
        rows["TOTAL"][r["outcome"]] += 1
    for counts in rows.values():
        counts["attempts"] = sum(v for k, v in counts.items() if k in OUTCOMES and k != "n/a")
    width = max(len(a) for a in rows) + 2
    header = "area".ljust(width) + "".join(f"{title:>11}" for _, title in COLUMNS)
    lines = [header, "-" * len(header)]
    for area in sorted(rows, key=lambda a: (a == "TOTAL", a)):
        lines.append(area.ljust(width) + "".join(f"{rows[area][key]:>11}" for key, _ in COLUMNS))
    total = rows["TOTAL"]
    passed = sum(total[k] for k in PASS_OUTCOMES)
    lines.append(f"\npassed {passed} of {total['attempts']} attempts "
                 f"({sum(total[k] for k in FAIL_OUTCOMES)} failed, {total['n/a']} n/a)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="the src folder of the checkout to attack")
    p.add_argument("--python", default=DEFAULT_PYTHON if Path(DEFAULT_PYTHON).exists()
                   else sys.executable, help="interpreter with grootvl's dependencies")
    p.add_argument("--cases", help="comma-separated globs (or substrings) of case ids")
    p.add_argument("--out", help="write every result and the counts to this JSON file")
    p.add_argument("--workdir", help="where fixtures and case folders go (default: a temp dir, "
                   "removed at the end)")
    p.add_argument("--reuse-fixtures", action="store_true",
                   help="with --workdir: reuse the fixtures a previous run built there (same --src)")
    p.add_argument("--kills", type=int, default=10, help="kill -9 at random times (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random kill times")
    p.add_argument("--mem-gb", type=float, default=8.0, help="worker address-space cap")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    args = p.parse_args(argv)

    cases = select(build_cases(args.kills, args.seed), args.cases)
    if args.list:
        for case in cases:
            print(f"{case.id:70s} {case.kind:5s} expect {case.expect}")
        print(f"{len(cases)} cases")
        return 0
    src = Path(args.src).resolve()
    if not (src / "grootvl" / "__init__.py").is_file():
        p.error(f"--src {src}: no grootvl package there")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hostile-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(TOOLS)]),
           "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "NUMBA_NUM_THREADS": "2", "HOSTILE_MEM_GB": str(args.mem_gb),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    env.pop("GROOTVL_SCAN_IMPL", None)
    worker = Worker(args.python, env, work / "worker.log")
    print(f"attacking {src} with {len(cases)} cases; work folder {work}", file=sys.stderr)
    t0 = time.monotonic()
    saved = work / "fixtures.json"
    if args.reuse_fixtures and saved.is_file():
        fixtures, flags = json.loads(saved.read_text())
    else:
        shutil.rmtree(work / "fixtures", ignore_errors=True)
        setup = worker.request({"op": "setup", "root": str(work / "fixtures")}, timeout=3600)
        fixtures, flags = setup["fixtures"], setup["flags"]
        for name, error in setup["errors"].items():
            print(f"fixture {name} not built:\n{error}", file=sys.stderr)
        saved.write_text(json.dumps([fixtures, flags]))
        print(f"fixtures built in {time.monotonic() - t0:.0f} s", file=sys.stderr)

    def call(func, **kwargs):
        response = worker.request({"op": "call", "func": func, "kwargs": kwargs}, timeout=300)
        return response.get("result") or {"error": response.get("error")}

    ctx = run_cases.ProcContext(args.python, env, fixtures, work, call)
    results = []
    try:
        for i, case in enumerate(cases, 1):
            if case.flag and case.flag not in flags.get(case.argv[0], ()):
                result = {"id": case.id, "area": case.area, "kind": case.kind,
                          "expect": case.expect, "outcome": "n/a", "seconds": 0.0,
                          "detail": f"{case.argv[0]} has no {case.flag} in this version"}
            else:
                result = run_one(case, worker, ctx, fixtures, work)
            results.append(result)
            mark = " " if result["outcome"] in PASS_OUTCOMES + ("n/a",) else "!"
            print(f"[{i:4d}/{len(cases)}] {mark} {result['outcome']:11s} {case.id}  "
                  f"{result['detail'][:150]}", file=sys.stderr, flush=True)
    finally:
        worker.stop()
        if args.out:
            by_area = defaultdict(Counter)
            for r in results:
                by_area[r["area"]][r["outcome"]] += 1
            Path(args.out).write_text(json.dumps({
                "src": str(src), "commit": _commit(src), "cases": len(results),
                "counts": dict(Counter(r["outcome"] for r in results)),
                "by_area": {a: dict(c) for a, c in sorted(by_area.items())},
                "seconds": round(time.monotonic() - t0, 1), "results": results}, indent=1))
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    return 0


def _commit(src: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
