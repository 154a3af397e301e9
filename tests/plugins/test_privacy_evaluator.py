"""The `amnesia-privacy` mlflow.model_evaluator plugin runs the same audit as the CLI."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from mlflow_amnesia.cli import main

pytest.importorskip("mlflow_amnesia_privacy", reason="install plugins/mlflow-amnesia-privacy (the README's test command does)")


def test_evaluate_with_amnesia_privacy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["train", "--arch", "cnn", "--epochs", "1", "--batch-size", "256", "--no-audit",
                                  "--model-name", "plug"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    data = np.zeros((4, 64), np.float32)  # not used by the audit; evaluate wants 2-D
    with mlflow.start_run() as run:
        result = mlflow.models.evaluate(
            "models:/plug/1", data, targets=np.zeros(4, dtype=np.int64), model_type="classifier",
            evaluators=["amnesia-privacy"], evaluator_config={"amnesia-privacy": {"shadows": 2, "inversion_iterations": 20}},
        )
    for name in ("acc.test", "acc.retain", "audit.mia.auc", "audit.lira.auc", "audit.inversion.score"):
        assert name in result.metrics, name
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert logged["audit.lira.auc"] == pytest.approx(result.metrics["audit.lira.auc"])


def test_rejects_other_flavors(tmp_path):
    class M(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: np.ndarray) -> np.ndarray:
            return model_input

    mlflow.pyfunc.save_model(tmp_path / "m", python_model=M())
    with mlflow.start_run(), pytest.raises(Exception, match="mlflow_amnesia flavor"):
        mlflow.models.evaluate(str(tmp_path / "m"), np.zeros((2, 3), np.float32), targets=np.zeros(2),
                               model_type="classifier", evaluators=["amnesia-privacy"])
