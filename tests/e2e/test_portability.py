"""An example model rebuilt under an emulated second processor gives the committed id.

Opt-in (minutes under emulation): STEMMA_EMULATED_CHECK=1 and Debian's qemu-user installed.
benchmarks/portability_check.py is the same check with its figures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("STEMMA_EMULATED_CHECK") != "1" or shutil.which("qemu-x86_64") is None,
    reason="opt-in: STEMMA_EMULATED_CHECK=1 with qemu-x86_64 installed",
)
def test_an_emulated_amd_cpu_rebuilds_the_committed_id() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/portability_check.py"), "--cpu", "EPYC-Rome-v1"],
        capture_output=True,
        text=True,
        timeout=3000,
    )
    doc = json.loads(done.stdout)
    row = doc["emulated"]["EPYC-Rome-v1"]
    assert row["fingerprint_ops_differing"] == []
    assert row["id"] == doc["committed_id"], row
