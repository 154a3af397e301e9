"""A real `mlflow-amnesia purge` SIGKILLed between any two of its steps, then run again.

The purge job (mlflow_amnesia/jobs/purge.py) is a sequence of writes: the tag
``amnesia.purge_started`` and a tombstone, per store the manifest (steps marked purged) and then
the chunk files, the optimizer state, the version's files, its run's ``audit/`` files, the
tombstone's completion, the description note, and last the tag ``amnesia.purged``. The child
(tests/reliability_child.py, ``AMNESIA_TEST_KILL_AT=purge:<step>``) dies right after one of them;
the re-run must finish the erasure, and only say so once it is true:

* every chunk file of the steps that saw the forgotten records is gone (the store's chunks/
  directory is listed: a manifest saying "purged" proves nothing about the files);
* the weights, the optimizer state and the run's audit artifacts are gone;
* the tags, the tombstone and the description say purged; `verify` passes for both versions;
* a further re-run finds nothing left to do.

One training run and one forget (module fixture), restored from a copy before each kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import pytest
from helpers import KEY, MODEL, invoke

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("reliability_child.py")
KILLED = -signal.SIGKILL
POINTS = ["started", "manifest-written", "chunks-deleted", "optimizer-deleted", "model-files-deleted",
          "tombstone-completed", "described", "tagged"]
_CHUNK = re.compile(r"^(\d+)\.(\d+)\.")  # <step>.<part>.<ext>: a chunk file; markers are <step>.json


@contextlib.contextmanager
def _registry(base: Path, db: str = "mlflow.db"):
    import mlflow

    old = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mp = pytest.MonkeyPatch()
    uri = f"sqlite:///{base / db}"
    for k, v in {"MLFLOW_AMNESIA_QUIET": "1", "MLFLOW_AMNESIA_KEY": KEY,
                 "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}.items():
        mp.setenv(k, v)
    mp.chdir(base)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mp.undo()
        mlflow.set_tracking_uri(old[0])
        mlflow.set_registry_uri(old[1])


def _chunks_on_disk(store_dir: Path, steps) -> list[str]:
    """The chunk files of ``steps`` really under the store's chunks/ (a listing, no manifest)."""
    wanted = {int(s) for s in steps}
    return sorted(p.name for p in (store_dir / "chunks").iterdir()
                  if (m := _CHUNK.match(p.name)) and int(m.group(1)) in wanted)


@pytest.fixture(scope="module")
def forgotten(tmp_path_factory):
    """v1 trained (1 epoch, f32), v2 forgot 3 records by rolling back their steps; v1's run has an
    audit/ artifact. Saved as a copy, so each test restores the very same registry and files."""
    import mlflow

    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.mlflow.flavor import load_model

    root = tmp_path_factory.mktemp("purge-crash")
    base = root / "registry"
    base.mkdir()
    s = SimpleNamespace(base=base, saved=root / "saved")
    with _registry(base):
        invoke("train", "--arch", "cnn", "--epochs", "1", "--batch-size", "64", "--codec", "f32", "--no-audit")
        ids = invoke("records", "--model", MODEL, "--limit", "3").output.split()
        (base / "ids.txt").write_text("\n".join(ids) + "\n")
        invoke("forget", "--model", MODEL, "--records", str(base / "ids.txt"), "--yes", "--no-audit")
        v2 = load_model(f"models:/{MODEL}/2")
        s.store_dir = Path(urlparse(v2.segments[0].store_url).path)
        s.targets = sorted(int(t) for t in v2.rolled_back)
        s.chunks = _chunks_on_disk(s.store_dir, s.targets)
        s.optimizer_state = s.store_dir.parent / "training" / "optimizer_state.pt"
        c = registry.client()
        s.v1_run = c.get_model_version(MODEL, "1").run_id
        s.v1_dir = Path(urlparse(c.get_model_version_download_uri(MODEL, "1")).path)
        png = root / "inversion.png"
        png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x01" * 64)
        mlflow.MlflowClient().log_artifact(s.v1_run, str(png), "audit")
    assert s.targets and len(s.chunks) >= len(s.targets) and s.optimizer_state.is_file()
    assert (s.v1_dir / "data" / "weights.pt").is_file()
    shutil.copytree(base, s.saved, symlinks=True)
    return s


@pytest.fixture
def fresh(forgotten, request):
    """The module's registry as the fixture left it: the artifacts restored in place (their paths
    are absolute), the database copied under a new name (MLflow keeps the old one open)."""
    shutil.rmtree(forgotten.base / "mlruns")
    shutil.copytree(forgotten.saved / "mlruns", forgotten.base / "mlruns", symlinks=True)
    db = f"mlflow-{re.sub(r'[^A-Za-z0-9]+', '-', request.node.name)}.db"
    shutil.copy(forgotten.saved / "mlflow.db", forgotten.base / db)
    with _registry(forgotten.base, db):
        yield forgotten


def _run_killed(base: Path, point: str, *args: str) -> tuple[int, str]:
    env = {**os.environ, "MLFLOW_AMNESIA_QUIET": "1", "AMNESIA_TEST_KILL_AT": f"purge:{point}"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, str(CHILD), *args], env=env, cwd=base, capture_output=True, text=True,
                       timeout=300)
    return p.returncode, p.stdout + p.stderr


def _purge(ok: bool = True):
    r = invoke("purge", "--model", MODEL, "--version", "1", "--yes", ok=False)
    assert not ok or r.exit_code == 0, r.output
    return r


@pytest.mark.parametrize("point", POINTS)
def test_a_purge_killed_between_two_steps_is_finished_by_its_rerun(fresh, point):
    import mlflow

    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.jobs.purge import _kept
    from mlflow_amnesia.recording.store import DeltaStore

    s = fresh
    rc, out = _run_killed(s.base, point, "purge", "--model", MODEL, "--version", "1", "--yes")
    assert rc == KILLED, out
    if point == "manifest-written":  # issue 13: the steps read "purged", their deltas are all still on disk
        assert set(s.targets) <= set(DeltaStore.open(str(s.store_dir)).purged_steps)
        assert _chunks_on_disk(s.store_dir, s.targets) == s.chunks
        r = invoke("verify", "--model", MODEL, "--version", "2", ok=False)
        assert r.exit_code == 1, r.output
        assert f"chunks/{s.chunks[0]}" in r.output and f"mlflow-amnesia purge --model {MODEL} --version 1" in r.output

    r = invoke("verify", "--model", MODEL, "--version", "1", ok=False)
    if point == "tagged":  # the tag is the purge's last write: the purge is complete
        assert r.exit_code == 0, r.output
    else:
        assert r.exit_code == 1 and "the erasure is not finished" in r.output, r.output
        assert f"mlflow-amnesia purge --model {MODEL} --version 1`" in r.output

    rerun = _purge()
    assert "purged digits-cnn v1" in rerun.output or "already purged" in rerun.output, rerun.output
    assert _chunks_on_disk(s.store_dir, s.targets) == [], f"the re-run said {rerun.output!r}"
    assert DeltaStore.open(str(s.store_dir)).verify() == []
    assert not s.optimizer_state.exists()
    left = [p.relative_to(s.v1_dir).as_posix() for p in s.v1_dir.rglob("*") if p.is_file()]
    assert "data/weights.pt" not in left and all(_kept(f) for f in left), left
    assert [f.path for f in mlflow.MlflowClient().list_artifacts(s.v1_run, "audit")] == []
    mv = registry.client().get_model_version(MODEL, "1")
    assert mv.tags.get("amnesia.purged") and mv.description.startswith("**Purged**"), (mv.tags, mv.description)
    assert json.loads((s.v1_dir / "data" / "purged.json").read_text())["completed_at"]
    for v in ("2", "1"):
        r = invoke("verify", "--model", MODEL, "--version", v, ok=False)
        assert r.exit_code == 0 and "still on disk" not in r.output, r.output
    assert "already purged, nothing left to delete" in _purge().output


def test_a_purge_deletes_the_chunk_files_of_a_store_whose_manifest_is_gone(fresh):
    """No manifest is no proof that the deltas are gone: the purge lists chunks/ and deletes the
    files of the steps that saw the records (and says so); verify names the missing manifest."""
    s = fresh
    (s.store_dir / "manifest.json").unlink()
    assert _chunks_on_disk(s.store_dir, s.targets) == s.chunks
    dry = invoke("purge", "--model", MODEL, "--version", "1", "--dry-run")
    assert f"delete {len(s.chunks)} chunk file(s)" in dry.output and "gone already" not in dry.output, dry.output
    _purge()
    assert _chunks_on_disk(s.store_dir, s.targets) == []
    assert not s.optimizer_state.exists() and not (s.v1_dir / "data" / "weights.pt").exists()
    r = invoke("verify", "--model", MODEL, "--version", "2", ok=False)
    assert r.exit_code == 1 and "the store's own manifest cannot be read" in r.output, r.output
