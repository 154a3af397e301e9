"""A tiny trained registry shared by the method tests: digits, small CNN, 2 epochs, batch 64,
f32 codec (exact rollbacks), no privacy audit. Each test works on its own copy of the db."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from mlflow_amnesia.cli import main

MODEL = "digits-cnn"
KEY = "22" * 32


def invoke(*args: str, ok: bool = True):
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if ok:
        assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("trained")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_AMNESIA_QUIET", "1")
    mp.setenv("MLFLOW_AMNESIA_KEY", KEY)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
    mp.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{base / 'mlflow.db'}")
    mp.chdir(base)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{base / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{base / 'mlflow.db'}")
    invoke("train", "--arch", "cnn", "--epochs", "2", "--batch-size", "64", "--codec", "f32", "--no-audit")
    mp.undo()
    return base


@pytest.fixture
def registry_copy(trained, tmp_path, monkeypatch):
    """A private copy of the trained registry's db (artifacts are shared, by absolute path)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_AMNESIA_KEY", KEY)
    db = tmp_path / "mlflow.db"
    shutil.copy(trained / "mlflow.db", db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{db}")
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    mlflow.set_registry_uri(f"sqlite:///{db}")
    monkeypatch.chdir(trained)
    return tmp_path
