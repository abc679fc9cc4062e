"""grootvl._threads: the OpenMP wait policy is set inside the library, whatever the import order."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

PROBE = """
import json, os, warnings
warnings.simplefilter("error")  # any warning at import fails the probe
{imports}
import numba
try:
    layer = numba.threading_layer()
except ValueError:
    layer = None
print(json.dumps({{"policy": os.environ.get("OMP_WAIT_POLICY"), "numba_pool": layer}}))
"""


def _probe(imports: str, policy: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", PROBE.format(imports=imports)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_torch_first_is_silent_and_starts_numba_passive_without_touching_the_environment():
    result = _probe("import torch\nimport grootvl")
    assert result["policy"] is None  # only numba's runtime saw PASSIVE, at its start
    assert result["numba_pool"] is not None  # started at import, while PASSIVE was set


def test_grootvl_first_sets_passive_for_both_runtimes():
    assert _probe("import grootvl\nimport torch") == {"policy": "PASSIVE", "numba_pool": None}


@pytest.mark.parametrize("imports", ["import torch\nimport grootvl", "import grootvl"])
def test_a_users_setting_is_kept(imports):
    result = _probe(imports, policy="ACTIVE")
    assert result == {"policy": "ACTIVE", "numba_pool": None}
