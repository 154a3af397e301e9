"""Run ``mlflow-amnesia ARGS...`` in a child process with a fault injected (tests/test_crash.py).
Not a test module: the tests start it with ``python THIS ARGS...``.

``AMNESIA_TEST_KILL_AT`` makes the process SIGKILL itself at one point:

* ``recording:N``  right after the N-th recorded optimizer step (train), chunks still in flight
* ``schema:N``     before the N-th SQL statement of MLflow creating a new database's schema
                   (``mlflow.store.db.utils._initialize_tables``: about 1,700 statements)
* ``audit``        after the unlearning method, as the forget's audit starts
* ``upload``       halfway through uploading the model version's artifacts
* ``registered``   right after the registry created the version, before anything else
* ``described``    right after the new version's description was written
* ``aliased``      right after ``--set-alias`` moved the alias to the new version
* ``superseded``   right after the parent was tagged ``amnesia.superseded_by``
* ``bannered``     right after the superseded banner was written atop the parent's description
* ``entered``      right after forget entered the request in the erasure ledger, before the method
* ``ledgered``     right after the erasure ledger's ``forgotten`` entry of the new version was written
* ``purging``      during the ``--purge`` that follows: tombstone and chunks gone, model files not yet
* ``purge:STEP``   between two steps of the purge job (tests/test_purge_crash.py), in order:
  ``started`` (tag amnesia.purge_started and the tombstone written, no chunk deleted),
  ``manifest-written`` (``DeltaStore.purge`` wrote its manifest, steps marked purged, before it
  unlinked a chunk), ``chunks-deleted``, ``optimizer-deleted``, ``model-files-deleted`` (the
  version's files gone, its run's audit/ files not yet), ``tombstone-completed``, ``described``
  (the **Purged** note added to the description), ``tagged`` (the tag amnesia.purged set); and for
  ``purge --request``'s shadow runs (tests/test_shadow_erasure.py): ``shadow-started`` (a run tagged
  amnesia.purge_started), ``shadow-deleted`` (its artifacts deleted, not yet tagged amnesia.purged),
  ``shadow-tagged`` (the first run tagged amnesia.purged; the others and the ledger's
  ``purged-shadows`` entry not yet)

``AMNESIA_TEST_BARRIER=DIR:N`` holds a forget after its last check that the parent has no child,
just before it registers, until N processes got there: two forgets from the same parent then
register at the same moment, the window only the registry's tie-break can settle.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill(point: str) -> None:
    if point.startswith("recording:"):
        from mlflow_amnesia.recording.recorder.recorder import Recorder

        n, orig, seen = int(point.split(":", 1)[1]), Recorder.step, [0]

        def step(self, *args, **kwargs):
            out = orig(self, *args, **kwargs)
            seen[0] += 1
            if seen[0] >= n:
                die()
            return out

        Recorder.step = step
    elif point.startswith("schema:"):
        import sqlalchemy
        import mlflow.store.db.utils as db_utils
        import mlflow.store.model_registry.sqlalchemy_store as registry_store

        n, orig_init, inside, seen = int(point.split(":", 1)[1]), db_utils._initialize_tables, [False], [0]

        def initialize_tables(engine):
            inside[0] = True
            try:
                return orig_init(engine)
            finally:
                inside[0] = False

        def before_execute(*args, **kwargs):
            if inside[0]:
                seen[0] += 1
                if seen[0] >= n:
                    die()

        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", before_execute)
        db_utils._initialize_tables = registry_store._initialize_tables = initialize_tables
    elif point == "audit":
        import mlflow_amnesia.audit as audit

        audit.full_audit = lambda *a, **k: die()
    elif point == "upload":
        from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

        orig_up = LocalArtifactRepository.log_artifacts

        def log_artifacts(self, local_dir, artifact_path=None):
            if not os.path.exists(os.path.join(local_dir, "MLmodel")):
                return orig_up(self, local_dir, artifact_path)
            files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
            for p in files[: len(files) // 2]:  # MLmodel sorts first: the half a reader would trust
                rel = p.parent.relative_to(local_dir).as_posix()
                self.log_artifact(str(p), None if rel == "." else rel)
            die()

        LocalArtifactRepository.log_artifacts = log_artifacts
    elif point == "registered":
        import mlflow.tracking._model_registry.fluent as fluent

        orig_reg = fluent._register_model

        def register(*args, **kwargs):
            orig_reg(*args, **kwargs)
            die()

        fluent._register_model = register
    elif point == "described":
        from mlflow_amnesia.mlflow import registry

        orig_annotate = registry.annotate_version

        def annotate(*args, **kwargs):
            orig_annotate(*args, **kwargs)
            die()

        registry.annotate_version = annotate
    elif point in ("aliased", "superseded"):
        from mlflow import MlflowClient

        name = "set_registered_model_alias" if point == "aliased" else "set_model_version_tag"
        orig_call = getattr(MlflowClient, name)

        def call(self, *args, **kwargs):
            out = orig_call(self, *args, **kwargs)
            if point == "aliased" or "amnesia.superseded_by" in args:
                die()
            return out

        setattr(MlflowClient, name, call)
    elif point == "bannered":  # the superseded banner written atop the parent's description
        from mlflow import MlflowClient

        orig_update = MlflowClient.update_model_version

        def update(self, *args, **kwargs):
            out = orig_update(self, *args, **kwargs)
            if str(kwargs.get("description") or "").startswith("> **Superseded by v"):
                die()
            return out

        MlflowClient.update_model_version = update
    elif point in ("entered", "ledgered"):
        from mlflow_amnesia.mlflow import ledger

        orig_write, kind = ledger.write, "request" if point == "entered" else "forgotten"

        def write(entry):
            out = orig_write(entry)
            if entry.kind == kind:
                die()
            return out

        ledger.write = write
    elif point == "purging":
        from mlflow_amnesia.jobs import purge

        purge._delete = lambda *a, **k: die()
    elif point.startswith("purge:"):
        install_purge_kill(point.split(":", 1)[1])
    elif point:
        raise SystemExit(f"unknown AMNESIA_TEST_KILL_AT {point!r}")


def _die_after(owner: object, name: str, when=lambda *a, **k: True) -> None:
    """Replace ``owner.name`` by a call of the original that SIGKILLs once it returned (if ``when``)."""
    orig = getattr(owner, name)

    def call(*args, **kwargs):
        out = orig(*args, **kwargs)
        if when(*args, **kwargs):
            die()
        return out

    setattr(owner, name, call)


def install_purge_kill(where: str) -> None:
    from mlflow import MlflowClient

    from mlflow_amnesia.jobs import purge
    from mlflow_amnesia.recording.store import DeltaStore

    if where == "started":
        DeltaStore.purge = lambda self, steps: die()
    elif where == "manifest-written":
        orig = DeltaStore.purge

        def store_purge(self, steps):
            _die_after(self, "_write_manifest")  # on this store object only: the manifest of this purge
            return orig(self, steps)

        DeltaStore.purge = store_purge
    elif where == "chunks-deleted":
        _die_after(DeltaStore, "purge")
    elif where == "optimizer-deleted":
        _die_after(purge, "_rm_url")
    elif where == "model-files-deleted":
        _die_after(purge, "_delete")
    elif where == "tombstone-completed":
        _die_after(purge, "_write_tombstone", lambda *a, completed, **k: completed)
    elif where == "described":
        _die_after(MlflowClient, "update_model_version")
    elif where == "shadow-started":  # purge --request: a shadow run tagged amnesia.purge_started, no file deleted
        _die_after(MlflowClient, "set_tag", lambda self, run_id, key, *a, **k: key == purge.TAG_PURGE_STARTED)
    elif where == "shadow-deleted":  # ... its artifacts deleted, the run not yet tagged amnesia.purged
        _die_after(purge, "_delete", lambda repo, files, what: what.startswith("shadow run"))
    elif where == "shadow-tagged":  # ... the first run tagged amnesia.purged: the others and the ledger entry not yet
        _die_after(MlflowClient, "set_tag", lambda self, run_id, key, *a, **k: key == purge.TAG_PURGED)
    elif where == "tagged":
        _die_after(MlflowClient, "set_model_version_tag", lambda self, name, version, key=None, *a, **k: key == purge.TAG_PURGED)
    else:
        raise SystemExit(f"unknown AMNESIA_TEST_KILL_AT purge:{where}")


def install_barrier(spec: str) -> None:
    import mlflow

    where, n = spec.rsplit(":", 1)
    d, orig = Path(where), mlflow.register_model

    def register_model(*args, **kwargs):
        (d / f"{os.getpid()}.ready").touch()
        deadline = time.monotonic() + 360  # two forgets on 2 shared cores can arrive minutes apart
        while len(list(d.glob("*.ready"))) < int(n):
            if time.monotonic() > deadline:
                raise SystemExit("barrier: the other forget never arrived")
            time.sleep(0.05)
        return orig(*args, **kwargs)

    mlflow.register_model = register_model


if __name__ == "__main__":
    install_kill(os.environ.get("AMNESIA_TEST_KILL_AT", ""))
    if os.environ.get("AMNESIA_TEST_BARRIER"):
        install_barrier(os.environ["AMNESIA_TEST_BARRIER"])
    from mlflow_amnesia.cli import main

    main(sys.argv[1:], prog_name="mlflow-amnesia")
