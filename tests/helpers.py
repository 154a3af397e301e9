"""Helpers shared by the CLI-level tests (the fixtures `trained` and `registry_copy` are in conftest.py)."""

from __future__ import annotations

from click.testing import CliRunner

MODEL = "digits-cnn"
KEY = "22" * 32


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
