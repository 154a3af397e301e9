"""`scripts/erasure_check.py --quick`: a subset of issue 13's replay (bad inputs, kills, two forgets
at once, clear-text greps, the key-less re-identification attack) passes in full.

The script builds its own throw-away workspace (HOME, sqlite tracking store, key, lock dir) and
runs the CLI in child processes; the whole set (`python scripts/erasure_check.py`) is the
figures in docs/RELIABILITY.md, "Replaying the attack".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_the_quick_replay_of_the_attack_passes_every_case(tmp_path):
    out = tmp_path / "figures.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "erasure_check.py"), "--quick", "--output", str(out)],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert out.is_file(), p.stdout[-3000:] + p.stderr[-3000:]
    figures = json.loads(out.read_text())
    failed = [f"{c['category']}: {c['name']}: {c['detail']}" for c in figures["cases"] if not c["ok"]]
    assert not failed, "\n".join(failed)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert figures["failed"] == 0 and "total: " in p.stdout and " 0 failed" in p.stdout.splitlines()[-1]
    cats = figures["categories"]
    assert set(cats) == {"bad inputs", "kills", "concurrency", "clear text", "re-identification"}
    assert all(c["passed"] > 0 for c in cats.values()), cats
    assert figures["clear_text_hits"] == 0
