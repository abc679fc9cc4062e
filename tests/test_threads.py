"""grootvl._threads: the OpenMP wait policy is set at ``import grootvl`` when torch is not
loaded yet, and a user's setting is always kept."""
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


def test_torch_first_is_silent_and_leaves_the_environment_and_numba_alone():
    # torch's OpenMP runtime has read its settings already: nothing to set, no pool started
    assert _probe("import torch\nimport grootvl") == {"policy": None, "numba_pool": None}


def test_grootvl_first_sets_passive_before_torch_loads_its_runtime():
    assert _probe("import grootvl\nimport torch") == {"policy": "PASSIVE", "numba_pool": None}


@pytest.mark.parametrize("imports", ["import torch\nimport grootvl", "import grootvl"])
def test_a_users_setting_is_kept(imports):
    result = _probe(imports, policy="ACTIVE")
    assert result == {"policy": "ACTIVE", "numba_pool": None}
