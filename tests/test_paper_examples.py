"""The paper's examples (examples/paper/) run from one command each, at a tiny size (``--quick``
on the embedded digits), write readable PNGs and sane figures, and log them to MLflow.

All four share one tracking store, so version 1 and the shadow models are trained once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "paper"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("paper")
    db = f"sqlite:///{base / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": db, "MLFLOW_REGISTRY_URI": db, "MLFLOW_AMNESIA_KEY": "44" * 32,
           "MLFLOW_AMNESIA_QUIET": "1", "XDG_CONFIG_HOME": str(base / "config"), "GIT_PYTHON_REFRESH": "quiet",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    return base, env


def _run(store, name: str, *args: str) -> tuple[Path, str]:
    base, env = store
    out = base / "out"
    r = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--dataset", "digits", "--quick",
                        "--out", str(out), *args], env=env, cwd=base, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return out, r.stdout


def _png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        assert im.width >= 400 and im.height >= 300, (path, im.size)


def _example_run(store, name: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store[1]["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("amnesia-paper")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`amnesia.example` = '{name}'")
    assert len(runs) == 1
    return client, runs[0]


def _points(curve: dict) -> dict[str, dict]:
    return {label: p for label, p in curve["points"]}


def test_figure_1_2_class_accuracy_falls_and_curves_are_logged(store):
    out, stdout = _run(store, "figure_1_2", "--requests", "class")
    _png(out / "figure_1_2_class3.png")
    res = json.loads((out / "figure_1_2.json").read_text())
    curves = res["requests"]["class3"]["curves"]
    assert set(curves) == {"finetune", "relabel", "amnesiac", "retrain"}
    am = _points(curves["amnesiac"])
    assert list(am) == ["0", "0'", "1", "2"]
    # version 1 knows the class, far above chance (0.1). After --quick's 2 epochs its accuracy depends on
    # the batch order, keyed by the record key since issue 13: 0.54, 0.55, 0.71, 0.85 under four keys.
    assert am["0"]["epoch.acc.target"] > 0.5
    assert am["0'"] != am["0"]  # the rollback changed the weights ...
    assert _points(curves["finetune"])["0'"] == am["0"]  # ... finetune's removal step did not
    for method in ("relabel", "amnesiac", "retrain"):  # these forget the class (naive retraining may not: the paper's point)
        assert curves[method]["points"][-1][1]["epoch.acc.target"] < 0.2, method
        assert curves[method]["points"][-1][1]["epoch.acc.target_heldout"] < 0.2, method
    assert "| amnesiac (+ finetune repair) | target |" in stdout

    client, run = _example_run(store, "figure_1_2")
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {"plots/figure_1_2_class3.png"}
    hist = client.get_metric_history(curves["amnesiac"]["run_id"], "epoch.acc.target")
    assert sorted(m.step for m in hist) == [0, 1, 2]  # per epoch, on the forget run itself


def test_table_1_membership_figures_are_sane(store):
    out, stdout = _run(store, "table_1", "--requests", "records")
    _png(out / "table_1_records3.png")
    res = json.loads((out / "table_1.json").read_text())
    req = res["requests"]["records3"]
    assert req["n_targets"] == 3 and req["n_nonmembers"] > 10
    for method, curve in req["curves"].items():
        for label, p in curve["points"]:
            for key in ("epoch.mia.recall", "epoch.mia.auc", "epoch.mia.tpr_at_1pct_fpr", "epoch.lira.auc"):
                assert 0.0 <= p[key] <= 1.0, (method, label, key, p[key])
    assert "MIA recall (the paper's figure)" in stdout and "| retrain (reference) |" in stdout


def test_figure_7_accuracy_against_rolled_back_share(store):
    out, _ = _run(store, "figure_7")
    _png(out / "figure_7.png")
    res = json.loads((out / "figure_7.json").read_text())
    acc = res["acc"]
    assert len(acc) == 2 and all(len(row) == len(res["shares"]) for row in acc)
    assert res["shares"] == sorted(res["shares"]) and 0 < res["shares"][0] and res["shares"][-1] <= 0.5
    assert all(0.0 <= a <= 1.0 for row in acc for a in row)
    assert sum(row[-1] for row in acc) / len(acc) < res["acc_v1"]  # rolling back half the steps costs accuracy
    assert 0 < res["record_shares"]["1"] <= res["record_shares"]["10"] <= 1


def test_inversion_grid_and_scores(store):
    out, stdout = _run(store, "inversion")
    _png(out / "inversion_class3.png")
    res = json.loads((out / "inversion.json").read_text())
    labels = [m["label"] for m in res["models"]]
    assert len(labels) == 6 and labels[0].startswith("version 1") and labels[-1].startswith("retrain")
    for m in res["models"]:
        assert 0.0 <= m["score"] <= 1.0 and 0.0 <= m["control_score"] <= 1.0
        assert len(m["confidence"]) == 3  # 2 restarts of the class + 1 of the control class
    forgotten = [m for m in res["models"] if "0')" not in m["label"] and not m["label"].startswith("version 1")]
    assert all(m["acc_target_heldout"] < 0.2 for m in forgotten)
    assert "inversion score" in stdout
