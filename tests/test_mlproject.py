"""The MLproject entry point, as users run it (slow: a real subprocess and a real ResNet18), and
the verdict a forget of the quick start's model gets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mlflow_run_train_local_env(tmp_path, monkeypatch):
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
    # The quick start's model (ResNet18 on digits; here 1 epoch, 2 shadows, not 4 and 4: the
    # measured 4-epoch verdict is in docs/BENCHMARKS.md, "Audit verdict") leaks nothing a LiRA
    # can see, so a forget of it is inconclusive, saying why, never pass.
    from helpers import invoke

    from mlflow_amnesia.audit.verdict import INCONCLUSIVE

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)
    ids = invoke("records", "--model", "digits-resnet", "--limit", "30").output.split()
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    out = invoke("forget", "--model", "digits-resnet", "--records", "ids.txt", "--yes", "--shadows", "2",
                 "--inversion-iterations", "20").output
    v2 = mlflow.MlflowClient().get_model_version("digits-resnet", "2")
    reason = v2.tags["amnesia.audit.verdict_reason"]
    print(f"\nquick start's ResNet18, 1 epoch, 30 records: {reason}")
    assert v2.tags["amnesia.audit.verdict"] == INCONCLUSIVE, reason
    assert reason.startswith("the parent shows no detectable membership on these records (LiRA AUC "), reason
    assert f"audit verdict: inconclusive: {reason}" in out
