"""Shared fixtures: a private key, a private tracking store, quiet progress, real MNIST files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _mnist_dir() -> Path:
    env = os.environ.get("MLFLOW_AMNESIA_MNIST_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "mnist-t10k"


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Every test: quiet progress, its own key and config dir, its own sqlite tracking store."""
    base = tmp_path_factory.mktemp("iso")
    monkeypatch.setenv("MLFLOW_AMNESIA_QUIET", "1")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(base / "config"))
    monkeypatch.setenv("MLFLOW_AMNESIA_KEY", "11" * 32)
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
