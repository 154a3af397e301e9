"""The `amnesia-privacy` mlflow.model_evaluator plugin keeps `mlflow.models.evaluate`'s contract:
the data it is given are the non-members, its artifacts come back in `result.artifacts`, its
metrics are linked to the evaluated logged model, and it runs beside `default`."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from mlflow_amnesia.cli import main

pytest.importorskip("mlflow_amnesia_privacy", reason="install plugins/mlflow-amnesia-privacy (the README's test command does)")

CFG = {"shadows": 2, "inversion_iterations": 20, "process_every": 20}


@pytest.fixture(scope="module")
def plug(tmp_path_factory):
    """A trained version and 60 of its held-out records as the pyfunc takes them (flat raw pixels)."""
    import os

    base = tmp_path_factory.mktemp("plug")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
    mp.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{base / 'mlflow.db'}")
    mp.setenv("MLFLOW_AMNESIA_KEY", os.environ.get("MLFLOW_AMNESIA_KEY", "11" * 32))
    mp.chdir(base)
    mlflow.set_tracking_uri(f"sqlite:///{base / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{base / 'mlflow.db'}")
    r = CliRunner().invoke(main, ["train", "--arch", "cnn", "--epochs", "1", "--batch-size", "256", "--no-audit",
                                  "--model-name", "plug"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    from mlflow_amnesia.learning.data import Split, load_dataset
    from mlflow_amnesia.mlflow.flavor import load_model

    am = load_model("models:/plug/1")
    records = load_dataset("digits")
    hold = np.asarray(Split.from_json(am.info.split, records).holdout)[:60]
    raw = np.rint((records.x[hold].numpy() * 0.3760492217920148 + 0.30526028624095713) * 16).reshape(60, -1)
    yield base, raw, records.y[hold].numpy(), am, records
    mp.undo()


def test_uses_the_data_returns_artifacts_links_metrics_beside_default(plug):
    base, x, y, am, records = plug
    mlflow.set_tracking_uri(f"sqlite:///{base / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{base / 'mlflow.db'}")
    with mlflow.start_run() as run:
        result = mlflow.models.evaluate(
            "models:/plug/1", x, targets=y, model_type="classifier", model_config={"output": "label_index"},
            evaluators=["default", "amnesia-privacy"], evaluator_config={"amnesia-privacy": CFG},
        )
    # the data given are what was measured: accuracy on exactly these rows, 60 non-members
    native = am.predict_raw(x).argmax(1)
    assert result.metrics["acc.eval"] == pytest.approx(float((native == y).mean()))
    assert result.metrics["audit.n_nonmembers"] == 60
    for name in ("audit.mia.auc", "audit.lira.auc", "audit.inversion.score", "accuracy_score"):
        assert name in result.metrics, name  # ours and the default evaluator's, side by side
    assert result.metrics["accuracy_score"] == pytest.approx(result.metrics["acc.eval"])
    # artifacts come back, and lie on the run
    assert {"amnesia_inversion", "amnesia_scores"} <= set(result.artifacts)
    scores = result.artifacts["amnesia_scores"].content
    assert len(scores["rows"]) == 60 and scores["rows"][0]["label"] == int(y[0])
    assert "digits:" not in str(scores)  # no record id in what is returned
    listed = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "amnesia-privacy")}
    assert listed == {"amnesia-privacy/inversion.png", "amnesia-privacy/scores.json"}
    # the metrics are linked to the version's logged model and to the evaluation dataset
    model_id = mlflow.models.get_model_info("models:/plug/1").model_id
    linked = {m.key: m for m in mlflow.MlflowClient().get_logged_model(model_id).metrics}
    assert linked["audit.lira.auc"].value == pytest.approx(result.metrics["audit.lira.auc"])
    assert linked["audit.lira.auc"].dataset_digest is not None and linked["audit.lira.auc"].run_id == run.info.run_id


def test_other_data_give_other_figures_and_bad_rows_are_refused(plug):
    base, x, y, am, records = plug
    mlflow.set_tracking_uri(f"sqlite:///{base / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{base / 'mlflow.db'}")
    cfg = {**CFG, "privacy": False}
    with mlflow.start_run():
        half = mlflow.models.evaluate("models:/plug/1", x[:30], targets=y[:30], model_type="classifier",
                                      evaluators=["amnesia-privacy"], evaluator_config={"amnesia-privacy": cfg})
    assert half.metrics["audit.n_nonmembers"] == 30
    assert half.metrics["acc.eval"] == pytest.approx(float((am.predict_raw(x[:30]).argmax(1) == y[:30]).mean()))
    from mlflow_amnesia.learning.data import Split

    train0 = int(np.asarray(Split.from_json(am.info.split, records).train)[0])
    bad = x.copy()
    bad[3] = np.rint((records.x[train0].numpy() * 0.3760492217920148 + 0.30526028624095713) * 16).reshape(-1)
    with mlflow.start_run(), pytest.raises(Exception, match="row 3 of the evaluation data is a training record"):
        mlflow.models.evaluate("models:/plug/1", bad, targets=y, model_type="classifier",
                               evaluators=["amnesia-privacy"], evaluator_config={"amnesia-privacy": cfg})
    with mlflow.start_run(), pytest.raises(Exception, match="target of row 0 is"):
        mlflow.models.evaluate("models:/plug/1", x, targets=(y + 1) % 10, model_type="classifier",
                               evaluators=["amnesia-privacy"], evaluator_config={"amnesia-privacy": cfg})


def test_a_model_of_another_flavor_is_skipped_not_broken(tmp_path, caplog):
    class M(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: np.ndarray) -> np.ndarray:
            return np.zeros(len(model_input), dtype=np.int64)

    mlflow.pyfunc.save_model(tmp_path / "m", python_model=M())
    x, y = np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1])
    with mlflow.start_run():  # evaluators left out: every installed one, ours included
        result = mlflow.models.evaluate(str(tmp_path / "m"), x, targets=y, model_type="classifier")
    assert "accuracy_score" in result.metrics and not any(k.startswith("audit.") for k in result.metrics)
    assert "amnesia-privacy: skipped, the model is not of the mlflow_amnesia flavor" in caplog.text
    with mlflow.start_run(), pytest.raises(Exception, match="could not be evaluated by any"):
        mlflow.models.evaluate(str(tmp_path / "m"), x, targets=y, model_type="classifier",
                               evaluators=["amnesia-privacy"])
