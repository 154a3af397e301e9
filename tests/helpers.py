"""Helpers shared by the CLI-level tests (the fixtures `trained` and `registry_copy` are in conftest.py)."""

from __future__ import annotations

import os

from click.testing import CliRunner

MODEL = "digits-cnn"
KEY = "22" * 32

#: ``MLFLOW_AMNESIA_TEST_FULL=1``: the stress tests at their full breadth (10 trials of the race
#: of two forgets on the team deployment instead of 4; 10 kill points in the schema creation
#: instead of 5). The default keeps every kind of case, fewer repeats, so the README's test
#: command stays within CI's 30 minutes on a 2-core machine.
FULL = os.environ.get("MLFLOW_AMNESIA_TEST_FULL") == "1"


def invoke(*args: str, ok: bool = True):
    from mlflow_amnesia.cli import main

    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if ok:
        assert r.exit_code == 0, r.output
    return r


def as_sha256_store(store_dir, version: int) -> dict:
    """Rewrite the manifest of the local store at ``store_dir`` as a release before format 4 wrote
    it: ``format_version`` ``version`` (1-3) and a sha256 digest per chunk instead of BLAKE3.
    Returns the new manifest."""
    import hashlib
    import json
    from pathlib import Path

    d = Path(store_dir)
    m = json.loads((d / "manifest.json").read_text())
    m["format_version"] = version
    if version == 1:
        m.pop("encryption", None)
    for e in m["steps"]:
        for c in e.get("chunks", []):
            del c["blake3"]
            c["sha256"] = hashlib.sha256((d / c["file"]).read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(m))
    return m
