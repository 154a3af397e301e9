"""The runnable examples keep running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_own_loop_example():
    r = subprocess.run([sys.executable, str(REPO / "examples" / "own_loop.py"), "--epochs", "1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "forgetting" in r.stdout and "held-out accuracy" in r.stdout
