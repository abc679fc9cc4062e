"""Worker-side preparation and checks of CLI cases (run under the attacked source tree).

* ``prep_*(fx, case_dir, **kw)``: files a CLI case needs in its folder before it runs.
* ``check_*(fx, case_dir, response)``: after a CLI case exits 0, raise ``Silent`` (or
  ``DataLost``) if the result is wrong although the exit status says success.
* ``compare_checkpoints``: a helper the controller calls for the kill -9 cases.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from .worker import DataLost, Silent

# ------------------------------------------------------------------------------- CLI preps

def prep_yaml(fx, case_dir, yaml: str) -> None:
    Path(case_dir, "cfg.yaml").write_bytes(yaml.encode("latin-1"))


def prep_copy_run(fx, case_dir, **_) -> None:
    shutil.copytree(fx["run"], Path(case_dir, "out"))


def prep_stale_tmp(fx, case_dir, **_) -> None:
    prep_copy_run(fx, case_dir)
    Path(case_dir, "out", ".last.pth.hx7f2k.tmp").write_bytes(b"half-written checkpoint")


# ------------------------------------------------------------------------------- CLI checks

def strict_json(text: str, what: str):
    def refuse(constant):
        raise Silent(f"{what} is not valid JSON: it holds {constant}")
    try:
        return json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as exc:
        raise Silent(f"{what} is not valid JSON ({exc})") from None


def _log(out: Path) -> list[dict]:
    path = out / "log.jsonl"
    if not path.is_file():
        raise Silent("exit 0 but no log.jsonl")
    return [strict_json(line, "a log.jsonl record") for line in path.read_text().splitlines()
            if line.strip()]


def _finite(record: dict, keys) -> None:
    for key in keys:
        value = record.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise Silent(f"exit 0 but {key} = {value} in epoch {record.get('epoch')}")


def check_train_ok(fx, case_dir, response) -> None:
    out = Path(case_dir, "out")
    epochs = [r for r in _log(out) if r.get("event") == "epoch"]
    if not epochs:
        raise Silent("exit 0 but no epoch was trained (no epoch record in log.jsonl)")
    for record in epochs:
        _finite(record, ("train_loss", "val_loss", "ema_val_loss", "lr"))
    if (out / "summary.json").is_file():
        strict_json((out / "summary.json").read_text(), "summary.json")


def check_summary_json(fx, case_dir, response) -> None:
    path = Path(case_dir, "out", "summary.json")
    if path.is_file():
        strict_json(path.read_text(), "summary.json")


def check_skip_reported(fx, case_dir, response) -> None:
    result = _last_json_line(response["stdout"])
    if "skip" not in response["stderr"].lower() and not result.get("skipped_images"):
        raise Silent("corrupt images were neither reported nor counted")
    if result.get("count") not in (None, 8):
        raise Silent(f"evaluated {result.get('count')} images, the folder has 8 readable ones")


def check_eval_count(fx, case_dir, response) -> None:
    count = _last_json_line(response["stdout"]).get("count")
    if count != 8:
        raise Silent(f"evaluated {count} images, the folder has 8 (a symlink loop was followed)")


def _last_json_line(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def check_dense_skips(fx, case_dir, response) -> None:
    text = response["stderr"].lower()
    log = Path(case_dir, "out", "log.jsonl")
    if "skip" not in text and (not log.is_file() or "skip" not in log.read_text().lower()):
        raise Silent("corrupt images/labels were neither skipped with a message nor counted")
    check_summary_json(fx, case_dir, response)


def check_summary_unchanged(fx, case_dir, response) -> None:
    before = json.loads(Path(fx["run"], "summary.json").read_text())
    after = json.loads(Path(case_dir, "out", "summary.json").read_text())
    if after.get("last") != before.get("last") or after.get("best_top1") != before.get("best_top1"):
        raise DataLost(f"summary.json of the finished run was rewritten (last: {after.get('last')})")


def check_fresh_run(fx, case_dir, response) -> None:
    starts = [r for r in _log(Path(case_dir, "out")) if r.get("event") == "start"]
    if len(starts) != 1:
        raise Silent(f"--overwrite kept the old run's log ({len(starts)} start records)")


def check_no_tmp(fx, case_dir, response) -> None:
    stale = sorted(p.name for p in Path(case_dir, "out").glob("*.tmp"))
    if stale:
        raise DataLost(f"stale temporary files left after a new start: {stale}")

def compare_checkpoints(a: str, b: str) -> dict:
    """Controller helper: are the model weights of two checkpoint files identical?"""
    import torch

    left = torch.load(a, map_location="cpu", weights_only=True)["model"]
    right = torch.load(b, map_location="cpu", weights_only=True)["model"]
    if set(left) != set(right):
        return {"equal": False, "detail": "different keys"}
    diff = max((float((left[k].double() - right[k].double()).abs().max()) for k in left
                if left[k].is_floating_point() and left[k].numel()), default=0.0)
    equal = all(torch.equal(left[k], right[k]) for k in left)
    return {"equal": equal, "detail": f"max |difference| {diff:.3g}"}
