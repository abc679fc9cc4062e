"""Threads: ``import grootvl`` changes no OpenMP setting, whatever the import order, and
grootvl's numba kernels run their parallel regions on torch's own OpenMP runtime (one pool
of worker threads, so there are no two pools to spin against each other)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

PROBE = """
import ctypes, json, os, warnings
warnings.simplefilter("error")  # any warning at import fails the probe
{imports}
import torch
from grootvl.ops import grid_tree
grid_tree(torch.rand(2, 4, 3, 3))  # a parallel numba kernel: starts numba's pool
# numba's OpenMP layer resolves GOMP_parallel through the global symbol scope first
def gomp_parallel(path, mode=0):
    try:
        return ctypes.cast(ctypes.CDLL(path, mode=mode).GOMP_parallel, ctypes.c_void_p).value
    except (OSError, AttributeError):  # not loaded, or no such symbol (another OpenMP)
        return None
glob = gomp_parallel(None)
torch_gomp = gomp_parallel(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1"),
                           os.RTLD_NOLOAD)
import numba
print(json.dumps({{"policy": os.environ.get("OMP_WAIT_POLICY"),
                  "spin": os.environ.get("GOMP_SPINCOUNT"), "layer": numba.threading_layer(),
                  "shared": None if None in (glob, torch_gomp) else glob == torch_gomp}}))
"""


def _probe(imports: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", PROBE.format(imports=imports)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GNU OpenMP on Linux")
@pytest.mark.parametrize("imports", ["import torch\nimport grootvl", "import grootvl\nimport torch"])
def test_no_openmp_setting_is_changed_and_numba_shares_torchs_runtime(imports):
    result = _probe(imports)
    # a passive wait policy made every parallel region wake a sleeping worker: on the 2-core
    # machine about 50-80 us more per torch operator (benchmarks/bench_threads.py)
    assert result["policy"] is None and result["spin"] is None
    if result["layer"] == "omp" and result["shared"] is not None:
        assert result["shared"], "numba's OpenMP pool is not torch's: two pools of workers"
