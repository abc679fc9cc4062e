"""A run's output folder: one run at a time, no run overwritten by accident, a log that
matches the snapshots.

* A lock (``filelock``, released by the operating system when the process dies, even by
  ``kill -9``) is held for the life of the run: a second run into the same folder refuses at
  once and names the holder's process id.
* A new run (no ``--resume``) into a folder that holds another run's files refuses, unless
  ``overwrite`` says to delete them first.
* Temporary files a killed process left behind (``.last.pth.*.tmp``) are removed.
* On resume, ``log.jsonl`` is cut back to the snapshot: every epoch's record is written (and
  fsynced) before the snapshot of that epoch, so a kill between the two leaves a record the
  snapshot does not claim; it is dropped, and the resumed run writes it again.

docs/design.md, "Package layers", describes the files of a run.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ..errors import UserError
from ..files import first_line
from .progress import read_jsonl
from .snapshots import BEST, EMA_BEST, LAST, atomic_write_text, remove_stale_temporaries

__all__ = ["LOCK_FILE", "RUN_FILES", "RunFolder"]

LOCK_FILE = ".grootvl.lock"
_OWNER_FILE = ".grootvl.lock.owner"  # the lock file itself is truncated by every contender
# the files a run writes (their presence means the folder holds a run)
RUN_FILES = (LAST, BEST, EMA_BEST, "log.jsonl", "metrics.json", "summary.json", "config.yaml")


class RunFolder:
    """The output folder of one run, locked from :meth:`claim` to :meth:`release`.

    Only the main process of a job claims it; the other processes of a ``torchrun`` job
    write nothing there.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = None

    def claim(self, resume: str | None, overwrite: bool = False) -> None:
        """Create and lock the folder, remove stale temporary files, and refuse to start a new
        run over another one's files unless ``overwrite`` (which deletes them)."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--output {self.path} is a file, not a folder; pass a folder for "
                            "the run's checkpoints and logs")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--output {self.path}: the folder cannot be created "
                            f"({first_line(exc)})") from None
        self._acquire_lock()
        try:
            remove_stale_temporaries(self.path)
            existing = [name for name in RUN_FILES if (self.path / name).exists()]
            if overwrite and resume:
                raise UserError("--overwrite starts a new run, --resume continues one; pass "
                                "only one of them")
            if existing and not resume:
                if not overwrite:
                    raise UserError(
                        f"--output {self.path} already holds a run ({', '.join(existing)}); "
                        "continue it with --resume auto, start over with --overwrite (deletes "
                        "those files), or pick another --output")
                for name in existing:
                    (self.path / name).unlink()
        except BaseException:
            self.release()
            raise

    def _acquire_lock(self) -> None:
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise UserError(f"--output {self.path} is in use by another run ({self._holder()}); "
                            "wait for it to finish or pick another --output") from None
        except OSError as exc:
            raise UserError(f"--output {self.path}: cannot lock the folder "
                            f"({first_line(exc)})") from None
        self._lock = lock
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        (self.path / _OWNER_FILE).write_text(json.dumps(owner))

    def _holder(self) -> str:
        try:
            owner = json.loads((self.path / _OWNER_FILE).read_text())
            return f"PID {owner['pid']} on {owner['host']}, running since {owner['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "its PID is not recorded yet"

    def release(self) -> None:
        """Unlock the folder (also done by the operating system if the process dies)."""
        if self._lock is not None:
            (self.path / _OWNER_FILE).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

    def cut_log(self, log_name: str, epoch: int, step: int) -> int:
        """Drop the records of ``log_name`` that lie past a snapshot taken after epoch
        ``epoch`` (``-1``: before any) at optimizer step ``step``, and lines a kill left
        half-written. Returns how many records were dropped."""
        path = self.path / log_name
        if not path.is_file():
            return 0
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        kept = [record for record in read_jsonl(path)
                if not (record.get("event") == "epoch" and _int(record.get("epoch")) > epoch)
                and not (record.get("event") == "train_step" and _int(record.get("step")) > step)]
        if len(kept) != len(lines):
            atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), path)
        return len(lines) - len(kept)


def _int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
