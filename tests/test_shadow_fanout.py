"""The audit's shadow pool fans out: `mlflow-amnesia shadow --member I` and `mlflow run . -e shadow`
train members in parallel processes; the forget's audit picks them up and trains none (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import invoke

REPO = Path(__file__).resolve().parents[1]
MODEL = "digits-mlp"


@pytest.mark.slow
def test_parallel_members_then_forget_uses_them(tmp_path, monkeypatch):
    import mlflow

    invoke("train", "--dataset", "digits", "--arch", "mlp", "--epochs", "1", "--shadows", "4", "--no-audit")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cli = [sys.executable, "-m", "mlflow_amnesia.cli", "shadow", "--model", MODEL, "--shadows", "4"]
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    # two processes at once, both training member 1 (a race the cache must survive); member 3 is left
    procs = [
        subprocess.Popen(cli + ["--member", "0", "--member", "1"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        subprocess.Popen(
            [str(mlflow_bin), "run", str(REPO), "-e", "shadow", "--env-manager", "local", "-P", f"model_name={MODEL}",
             "-P", "member=1", "-P", "shadows=4"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ),
    ]  # fmt: skip
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(o[-2000:] for o in outs)
    r = invoke("shadow", "--model", MODEL, "--shadows", "4")
    assert "finished: 2/4" in r.output and "missing: 2, 3" in r.output and "(4 members, recorded)" in r.output
    r = invoke("shadow", "--model", MODEL, "--shadows", "4", "--member", "2")
    assert "trained now: 2" in r.output and "missing: 3" in r.output
    # a re-run trains nothing
    r = invoke("shadow", "--model", MODEL, "--shadows", "4", "--member", "2")
    assert "trained now" not in r.output
    r = invoke("shadow", "--model", MODEL, "--shadows", "4", "--member", "4", ok=False)
    assert r.exit_code == 1 and "0..3" in r.output

    # the forget's audit assembles the pool from the finished members: it trains only member 3
    from mlflow_amnesia.audit import shadow as shadow_mod

    trained, real = [], shadow_mod.train_member

    def counting(*a, **kw):
        trained.append(a[6])
        return real(*a, **kw)

    monkeypatch.setattr(shadow_mod, "train_member", counting)
    ids = invoke("records", "--model", MODEL, "--limit", "2").output.split()
    (tmp_path / "ids.txt").write_text("\n".join(ids[:2]) + "\n")
    invoke(
        "forget", "--model", MODEL, "--records", str(tmp_path / "ids.txt"), "--yes", "--shadows", "4",
        "--inversion-iterations", "5",
    )  # fmt: skip
    assert trained == [3]
    c = mlflow.MlflowClient()
    mv = c.get_model_version(MODEL, "2")
    m = c.get_run(mv.run_id).data.metrics
    assert "audit.ulira.auc" not in m  # 2 records x 2 IN shadows: below the reportable count
    path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="audit/ulira.json", dst_path=str(tmp_path))
    doc = json.loads(Path(path).read_text())
    assert doc["method"] == "amnesiac" and len(doc["records"]) == 2
    assert doc["ulira_auc"]["n_members"] == 4 and doc["ulira_auc"]["n_nonmembers"] == 4
    text = Path(path).read_text()
    assert not any(i in text for i in ids[:2])
