"""What a run reports about itself: its peak memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's; elsewhere only ru_maxrss")
def test_a_run_s_peak_memory_is_its_own_not_its_parent_s() -> None:
    """summary.json's peak_rss_mb of a process started by a large one (a benchmark, a sweep): its
    own peak. getrusage's ru_maxrss also counts the parent's memory at the fork before the exec."""
    child = "from nnx.metrics import peak_rss_mb; print(peak_rss_mb())"
    parent = (
        "import subprocess, sys, numpy as np\n"
        "held = np.ones(50_000_000)  # 400 MB, touched\n"
        f"print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True).stdout)\n"
    )
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True).stdout
    assert 5 < float(out) < 200, out
