"""The harness's worker: imports the attacked grootvl once and runs many cases in-process.

Protocol: one JSON request per line on stdin, one JSON response per line on the file
descriptor that was stdout at start (fd 1 itself is pointed at /dev/null, so nothing a case
prints can corrupt the protocol). Requests: ``{"op": "setup", "root": ...}``,
``{"op": "case", ...}`` (a ``Case.request()`` plus ``case_dir`` and ``fixtures``) and
``{"op": "call", "func": ..., "kwargs": ...}`` (a helper of ``checks`` for the controller).

A CLI case runs ``grootvl.cli.main.main(argv)`` with stdout/stderr captured, the working
directory set to the case's folder, and an uncaught exception printed as the traceback a
user would see. Limits: the address space is capped (``--mem-gb``), so an unbounded
allocation fails here instead of taking the machine; the controller enforces time.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import resource
import sys
import time
import traceback
import warnings
from pathlib import Path

from .argv import fill

OOM_PATTERNS = re.compile(r"can't allocate memory|not enough memory|out of memory|"
                          r"cannot allocate memory|std::bad_alloc|MemoryError", re.I)


class Unavailable(Exception):
    """The attacked version lacks what the case needs (reported as n/a, not counted)."""


class Silent(Exception):
    """The call succeeded but its result is wrong (NaN, clamped, disagreeing...)."""


class DataLost(Exception):
    """A run folder lost a record or cannot be resumed to the same state."""


def _reset_process_state() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for module in list(sys.modules.values()):
        registry = getattr(module, "__warningregistry__", None)
        if isinstance(registry, dict):
            registry.clear()


@contextlib.contextmanager
def _captured(cwd: str):
    out, err = io.StringIO(), io.StringIO()
    saved = (sys.stdout, sys.stderr, os.getcwd(), dict(os.environ))
    _reset_process_state()
    sys.stdout, sys.stderr = out, err
    os.chdir(cwd)
    try:
        yield out, err
    finally:
        sys.stdout, sys.stderr = saved[0], saved[1]
        os.chdir(saved[2])
        os.environ.clear()
        os.environ.update(saved[3])
        _restore_torch()


def _restore_torch() -> None:
    try:
        import torch

        torch.use_deterministic_algorithms(False)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort between cases
        pass


def _src() -> str:
    """The attacked source tree (the folder holding the imported grootvl package)."""
    import grootvl

    return str(Path(grootvl.__file__).resolve().parent.parent)


def _exception_info(exc: BaseException, src: str) -> dict:
    frames = traceback.extract_tb(exc.__traceback__)
    in_src = [f for f in frames if f.filename.startswith(src)]
    where = in_src[-1] if in_src else (frames[-1] if frames else None)
    return {"type": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__],
            "msg": str(exc)[:2000],
            "where": f"{Path(where.filename).name}:{where.lineno} {where.name}" if where else "",
            "in_src": bool(in_src),
            "oom": isinstance(exc, MemoryError) or bool(OOM_PATTERNS.search(str(exc)[:2000]))}


def run_cli(argv: list[str], cwd: str) -> dict:
    """``grootvl ARGV`` in this process: rc, stdout, stderr (with any traceback), exception."""
    from grootvl.cli.main import main

    exc_info = None
    start = time.perf_counter()
    with _captured(cwd) as (out, err):
        try:
            rc = main(list(argv))
        except SystemExit as exc:  # argparse errors, and commands that exit themselves
            if isinstance(exc.code, int) or exc.code is None:
                rc = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                rc = 1
        except BaseException as exc:  # noqa: BLE001 - what the user would see: a traceback
            traceback.print_exc(file=sys.stderr)
            exc_info = _exception_info(exc, _src())
            rc = 1
    return {"rc": rc if isinstance(rc, int) else 1, "stdout": out.getvalue()[-20000:],
            "stderr": err.getvalue()[-20000:], "exc": exc_info,
            "elapsed": round(time.perf_counter() - start, 3)}


def _fill(value, fx: dict):
    if isinstance(value, str):
        try:
            return fill(value, fx)
        except KeyError as missing:
            raise Unavailable(f"fixture {missing} was not built") from None
    if isinstance(value, list):
        return [_fill(v, fx) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, fx) for k, v in value.items()}
    return value


def _function(name: str):
    """A harness function by name: a prep, a check, or an attack."""
    from . import checks, pyfuncs, scan_attacks

    for module in (checks, scan_attacks, pyfuncs):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"the harness has no function {name!r}")


def run_case(request: dict) -> dict:
    case_dir = request["case_dir"]
    Path(case_dir).mkdir(parents=True, exist_ok=True)
    fx = {**request["fixtures"], "case": case_dir, "out": str(Path(case_dir) / "out")}
    response: dict = {}
    try:
        if request["kind"] == "cli":
            if request["prep"]:
                _function(f"prep_{request['prep']}")(fx, case_dir, **request["kwargs"])
            response = run_cli(_fill(request["argv"], fx), case_dir)
            if request["func"] and response["rc"] == 0 and response["exc"] is None:
                _function(request["func"])(fx, case_dir, response)
        else:
            start = time.perf_counter()
            with _captured(case_dir) as (out, err):
                try:
                    result = _function(request["func"])(fx, case_dir,
                                                        **_fill(request["kwargs"], fx))
                    response = {"result": None if result is None else str(result)[:500]}
                except (Unavailable, Silent, DataLost):
                    raise
                except BaseException as exc:  # noqa: BLE001 - classified by the controller
                    response = {"exc": _exception_info(exc, _src())}
            response.update(stdout=out.getvalue()[-5000:], stderr=err.getvalue()[-5000:],
                            elapsed=round(time.perf_counter() - start, 3))
    except Unavailable as exc:
        response = {"unavailable": str(exc)}
    except Silent as exc:
        response["silent"] = str(exc)[:1000]
    except DataLost as exc:
        response["data_lost"] = str(exc)[:1000]
    except MemoryError:
        response["exc"] = {"type": "MemoryError", "mro": ["MemoryError"], "msg": "", "where": "",
                           "in_src": False, "oom": True}
    return response


def command_flags() -> dict[str, list[str]]:
    """The option strings of every ``grootvl`` sub-command of the attacked version."""
    import argparse

    from grootvl.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: sorted({o for action in sub._actions for o in action.option_strings})
            for name, sub in commands.choices.items()}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    mem_gb = float(os.environ.get("HOSTILE_MEM_GB", "8"))
    limit = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import grootvl  # noqa: F401 - the attacked package, imported once

    proto.write(json.dumps({"ready": True, "src": _src()}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "setup":
            from .fixtures import build_all

            fx, errors = build_all(Path(request["root"]), request.get("only"))
            response = {"fixtures": fx, "errors": errors, "flags": command_flags()}
        elif op == "call":
            try:
                response = {"result": _function(request["func"])(**request["kwargs"])}
            except Exception as exc:  # noqa: BLE001
                response = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            response = run_case(request)
        response["rss_mb"] = round(_rss_mb(), 1)
        proto.write(json.dumps(response, default=str) + "\n")


if __name__ == "__main__":
    # Run as hostile_cases.worker, not __main__: the attack modules import this module, and
    # its exception classes must be the ones run_case catches.
    from hostile_cases import worker as _package_module

    _package_module.main()
