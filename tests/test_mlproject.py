"""The MLproject entry point, as users run it (slow: a real subprocess and a real ResNet18)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mlflow_run_train_local_env(tmp_path):
    env = dict(os.environ)
    db = tmp_path / "mlflow.db"
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{db}", MLFLOW_REGISTRY_URI=f"sqlite:///{db}")
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    r = subprocess.run(
        [str(mlflow_bin), "run", str(REPO), "-e", "train", "--env-manager", "local", "-P", "epochs=1",
         "-P", "shadows=2", "-P", "inversion_iterations=20", "-P", "inversion=on"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    mlflow.set_registry_uri(f"sqlite:///{db}")
    mv = mlflow.MlflowClient().get_model_version("digits-resnet", "1")
    assert mv.tags["amnesia.method"] == "train"
    run = mlflow.MlflowClient().get_run(mv.run_id)
    assert run.data.params["epochs"] == "1"
    assert "acc.test" in run.data.metrics
    assert run.data.params["shadows"] == "2"
    # inversion=on: a trained version is inverted too (by default only a forget's classes are)
    assert "audit.mia.auc" in run.data.metrics and "audit.inversion.score" in run.data.metrics
    assert run.data.params["inversion"] == "on"
