"""The GPU check has no GPU to run on in CI: its CPU dry run (Triton interpreter, tiny shapes)
goes through every section, so a broken section is caught before a GPU session spends its
minutes on it."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_passes_every_section():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device",
                           "cpu", "--interpret", "--budget-s", "600"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "all checks OK" in out and "ERROR" not in out and "SKIP" not in out, out[-3000:]
