"""Shared fixtures: a private key, a private tracking store, quiet progress, real MNIST files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers import KEY, invoke

REPO = Path(__file__).resolve().parents[1]


def _mnist_dir() -> Path:
    env = os.environ.get("MLFLOW_AMNESIA_MNIST_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "mnist-t10k"


# Modules that take minutes run first: `pytest -n 2 --dist loadfile` (the README's test command)
# hands out whole modules in collection order, so a long one started last would run alone at the end.
LONG_FIRST = ("test_team_deployment.py", "test_erasure_check.py", "test_paper_examples.py", "test_verdict_models.py",
              "test_crash.py", "test_mlproject.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.path.name
        return LONG_FIRST.index(name) if name in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # stable: the order within a module, and of the other modules, is kept


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Every test: quiet progress, its own key and config dir, its own sqlite tracking store."""
    base = tmp_path_factory.mktemp("iso")
    monkeypatch.setenv("MLFLOW_AMNESIA_QUIET", "1")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(base / "config"))
    monkeypatch.setenv("MLFLOW_AMNESIA_KEY", "11" * 32)
    monkeypatch.setenv("MLFLOW_AMNESIA_LOCK_DIR", str(base / "locks"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{base / 'mlflow.db'}")
    monkeypatch.setenv("GIT_PYTHON_REFRESH", "quiet")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    import sys

    if "mlflow" in sys.modules:  # the tracking URI is process-global once set: reset it
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{base / 'mlflow.db'}")
        mlflow.set_registry_uri(f"sqlite:///{base / 'mlflow.db'}")
    yield


@pytest.fixture
def mnist_dir() -> Path:
    """The real MNIST test files (10,000 images) beside the checkout; skip where absent."""
    d = _mnist_dir()
    if not (d / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST files not found in {d} (set MLFLOW_AMNESIA_MNIST_DIR)")
    return d


# --------------------------------------------------------------------------------------------
# A tiny trained registry (digits, small CNN, 2 epochs, batch 64, f32 codec so rollbacks are
# exact, no privacy audit), trained once per test module; each test works on its own copy.

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
