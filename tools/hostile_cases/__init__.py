"""Cases of the hostile-input harness (``tools/hostile.py``).

A case is one attack with its expected outcome written down, so that the counts mean
something:

* ``expect="error"``: the input is invalid; the only correct outcome is a clean error (CLI:
  non-zero exit, a one-line ``error:`` message naming the problem, no traceback; library: an
  exception of an allowed type whose message names the argument).
* ``expect="ok"``: the input is valid (or must be tolerated, e.g. a corrupt image is skipped);
  the command must succeed and its result must pass the case's check.
* ``expect="either"``: a borderline input; a clean error or a correct success both pass.
* ``expect="warn"``: success is correct only with a warning on stderr matching ``names``
  (a clean error naming it passes too).

``kind`` says how it runs: ``cli`` (``grootvl.cli.main.main(argv)`` in the worker process),
``py`` (a function of ``pyfuncs`` / ``scan_attacks`` in the worker) or ``proc`` (a scenario
of real ``grootvl`` processes driven by the controller: kill -9, concurrency).

This package imports nothing of grootvl, torch or numpy: the controller stays stdlib-only.
Only ``worker``, ``fixtures``, ``checks``, ``pyfuncs`` and ``scan_attacks`` run under the
attacked source tree.
"""
from __future__ import annotations

from dataclasses import dataclass, field

PASS_OUTCOMES = ("clean_error", "ok")
FAIL_OUTCOMES = ("vague_error", "traceback", "silent", "refused", "data_lost", "hang_oom")
OUTCOMES = PASS_OUTCOMES + FAIL_OUTCOMES + ("n/a",)


@dataclass
class Case:
    id: str
    area: str
    kind: str                      # "cli" | "py" | "proc"
    expect: str                    # "error" | "ok" | "either" | "warn"
    argv: list = field(default_factory=list)
    func: str = ""                 # py: an attack; proc: run_cases.<func>; cli: checks.<func>
    kwargs: dict = field(default_factory=dict)
    names: str = ""                # regex (case-insensitive) the error message must match
    prep: str = ""                 # checks.prep_<name>(fx, case_dir) before a cli case
    allow: tuple = ("ValueError", "TypeError", "UserError")  # py: clean exception types
    timeout: float = 150.0
    note: str = ""
    flag: str = ""                 # a systematic flag attack: n/a where the command lacks it

    def request(self) -> dict:
        return {"id": self.id, "kind": self.kind, "argv": list(self.argv), "func": self.func,
                "kwargs": dict(self.kwargs), "prep": self.prep}


def build_cases(kills: int = 10, seed: int = 0) -> list[Case]:
    """Every case, in run order (cheap in-process ones first, real processes last)."""
    from . import cli_cases, lib_cases, run_cases

    cases = cli_cases.cases() + lib_cases.cases() + run_cases.cases(kills, seed)
    seen = set()
    for case in cases:
        if case.id in seen:
            raise AssertionError(f"duplicate case id {case.id}")
        seen.add(case.id)
    return cases
