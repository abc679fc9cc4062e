"""Run logging: JSON lines on disk and a human progress display with speed and ETA."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any


class JsonlLogger:
    """Appends one JSON object per line to ``path`` (no-op when ``path`` is None).

    Each record gets a wall-clock ``time``. Lines are flushed immediately so an interrupted
    run keeps everything logged so far; a ``durable`` record is also on disk (fsync) when
    ``log`` returns, for records a later file (a snapshot) will claim exist.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict[str, Any], durable: bool = False) -> None:
        if not self.path:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")
            if durable:
                f.flush()
                os.fsync(f.fileno())


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSON-lines log (a line a killed process left half-written is
    skipped)."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Progress over ``total`` steps of ``items_per_step`` samples each.

    ``mode``: ``bar`` (tqdm bar with samples/s, ETA and metrics), ``log`` (one line every
    ``log_every`` steps: for non-interactive logs), ``none``; ``auto`` = bar on a terminal,
    log otherwise. Disabled entirely when ``enabled`` is False (non-main ranks).
    """

    def __init__(self, total: int, desc: str, mode: str = "auto", log_every: int = 50,
                 enabled: bool = True, stream=None):
        self.total = total
        self.desc = desc
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "log"
        self.mode = mode if enabled else "none"
        self.log_every = max(1, log_every)
        self.start = time.perf_counter()
        self.count = 0
        self.samples = 0
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, file=self.stream, dynamic_ncols=True,
                             leave=True, unit="step")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.elapsed, 1e-9)

    def eta(self) -> float:
        if self.count == 0:
            return math.inf
        return self.elapsed / self.count * (self.total - self.count)

    def update(self, samples: int, **metrics: float) -> None:
        """One more step of ``samples`` samples; ``metrics`` are shown next to the speed."""
        self.count += 1
        self.samples += samples
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in metrics.items()}
        if self._bar is not None:
            self._bar.set_postfix({**shown, "img/s": f"{self.samples_per_s:.1f}"}, refresh=False)
            self._bar.update(1)
        elif self.mode == "log" and (self.count % self.log_every == 0 or self.count == self.total):
            parts = " ".join(f"{k} {v}" for k, v in shown.items())
            print(f"{self.desc} [{self.count}/{self.total}] {parts} "
                  f"{self.samples_per_s:.1f} img/s eta {format_duration(self.eta())}",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
