"""A tracking server that goes away in the middle of a command (the sqlite-backed half of the
team deployment's test, tests/test_team_deployment.py, which kills a real server): the forget's
error is one line that says what is left and that the same command, re-run, completes it; MLflow's
retries are bounded; train behind an artifact proxy without --store-uri is refused before a run.

The server's death is simulated where MLflow meets it: the request raises what MLflow raises
for a refused connection, and the server's /health probe fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import invoke

MODEL = "digits-cnn"
REFUSED = (
    "API request to http://127.0.0.1:9/api/2.0/mlflow/model-versions/create failed with exception "
    "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: /api/2.0/mlflow/model-versions/"
    "create (Caused by NewConnectionError('<urllib3.connection.HTTPConnection object>: Failed to establish a new "
    "connection: [Errno 111] Connection refused'))"
)
CUT = REFUSED.replace("NewConnectionError", "ProtocolError").replace("Connection refused", "Connection aborted")


def _ids(n: int = 2) -> Path:
    ids = invoke("records", "--model", MODEL, "--limit", str(n)).output.split()
    p = Path(os.getcwd()) / f"ids-{os.getpid()}.txt"
    p.write_text("\n".join(ids) + "\n")
    return p


def _versions() -> list[int]:
    import mlflow

    return sorted(int(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name = '{MODEL}'"))


def _server_gone(monkeypatch, where: str, message: str = REFUSED) -> None:
    from mlflow.exceptions import MlflowException

    import mlflow_amnesia.mlflow.concurrency as conc
    from mlflow_amnesia.mlflow import tracking

    monkeypatch.setattr(tracking, "server_answers", lambda timeout=5.0: False)
    if where == "register":
        monkeypatch.setattr("mlflow.register_model", lambda *a, **k: (_ for _ in ()).throw(MlflowException(message)))
    elif where == "race-check":
        import mlflow

        registered = []
        orig, orig_register = conc.children_of, mlflow.register_model

        def register_model(*a, **k):
            registered.append(orig_register(*a, **k))
            return registered[-1]

        def children_of(name, version):
            if registered:  # the race check after registering
                raise MlflowException(message)
            return orig(name, version)

        monkeypatch.setattr("mlflow.register_model", register_model)
        monkeypatch.setattr(conc, "children_of", children_of)


def test_server_gone_before_registering_says_nothing_was_registered_and_the_rerun_completes(registry_copy,
                                                                                            monkeypatch):
    ids = _ids()
    with monkeypatch.context() as m:
        _server_gone(m, "register")
        r = invoke("forget", "--model", MODEL, "--records", str(ids), "--yes", "--no-audit", ok=False)
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, r.output
    assert "HTTPConnectionPool" not in r.output and "Caused by" not in r.output
    assert "nothing was registered and v1 is unchanged" in r.output and "re-run the same command" in r.output
    assert _versions() == [1]
    invoke("forget", "--model", MODEL, "--records", str(ids), "--yes", "--no-audit")
    assert _versions() == [1, 2]


def test_server_cut_off_while_registering_says_the_version_may_exist(registry_copy, monkeypatch):
    ids = _ids()
    with monkeypatch.context() as m:
        _server_gone(m, "register", CUT)
        r = invoke("forget", "--model", MODEL, "--records", str(ids), "--yes", "--no-audit", ok=False)
    assert r.exit_code == 1 and "it may have been created" in r.output and "re-run the same command" in r.output
    invoke("forget", "--model", MODEL, "--records", str(ids), "--yes", "--no-audit")
    assert _versions() == [1, 2]


def test_server_gone_after_registering_names_the_version_and_the_rerun_finishes_it(registry_copy, monkeypatch):
    import mlflow

    ids = _ids()
    with monkeypatch.context() as m:
        _server_gone(m, "race-check")
        r = invoke("forget", "--model", MODEL, "--records", str(ids), "--yes", "--no-audit", ok=False)
    assert r.exit_code == 1 and "after v2 was registered" in r.output and "it finishes v2" in r.output, r.output
    assert _versions() == [1, 2]
    invoke("forget", "--model", MODEL, "--records", str(ids), "--yes", "--no-audit")
    assert _versions() == [1, 2]
    v1 = mlflow.MlflowClient().get_model_version(MODEL, "1")
    assert v1.tags.get("amnesia.superseded_by") == "2"


def test_another_mlflow_error_is_not_called_a_server_that_went_away(registry_copy, monkeypatch):
    """The server still answers /health: the error is MLflow's own, not reworded as the server gone."""
    from mlflow.exceptions import MlflowException

    from mlflow_amnesia.mlflow import tracking

    ids = _ids()
    monkeypatch.setattr(tracking, "server_answers", lambda timeout=5.0: True)
    monkeypatch.setattr(
        "mlflow.register_model", lambda *a, **k: (_ for _ in ()).throw(MlflowException("Max retries exceeded: 503"))
    )
    r = invoke("forget", "--model", MODEL, "--records", str(ids), "--yes", "--no-audit", ok=False)
    assert "went away during the forget" not in r.output
    assert _versions() == [1]


def test_the_retry_budget_applies_during_a_command_only_and_a_users_choice_wins(registry_copy, monkeypatch):
    from mlflow_amnesia.mlflow import tracking

    seen = {}
    monkeypatch.delenv(tracking.RETRIES_ENV, raising=False)
    monkeypatch.delenv(tracking.BACKOFF_ENV, raising=False)
    import mlflow_amnesia.jobs.lineage as lineage

    orig_rows = lineage.lineage_rows

    def recording(*a, **k):
        seen["during"] = (os.environ.get(tracking.RETRIES_ENV), os.environ.get(tracking.BACKOFF_ENV))
        return orig_rows(*a, **k)

    monkeypatch.setattr(lineage, "lineage_rows", recording)
    invoke("lineage", "--model", MODEL)
    assert seen["during"] == (str(tracking.DEFAULT_RETRIES), str(tracking.DEFAULT_BACKOFF))
    assert tracking.RETRIES_ENV not in os.environ and tracking.BACKOFF_ENV not in os.environ
    monkeypatch.setenv(tracking.RETRIES_ENV, "9")
    invoke("lineage", "--model", MODEL)
    assert seen["during"][0] == "9" and os.environ[tracking.RETRIES_ENV] == "9"


def test_a_forget_that_stopped_retrying_gives_the_process_its_retries_back(registry_copy, monkeypatch):
    import mlflow_amnesia as ma
    from mlflow_amnesia.errors import TrackingServerError
    from mlflow_amnesia.mlflow import tracking

    ids = _ids()
    monkeypatch.setenv(tracking.RETRIES_ENV, "6")
    _server_gone(monkeypatch, "register")
    with pytest.raises(TrackingServerError, match="nothing was registered"):
        ma.forget(MODEL, records_file=str(ids), yes=True, audit=False)
    assert os.environ[tracking.RETRIES_ENV] == "6"


def test_train_without_a_store_uri_behind_an_artifact_proxy_is_refused_before_a_run(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    invoke("train", "--arch", "cnn", "--epochs", "1", "--no-audit", "--model-name", "first")  # creates the db
    c = mlflow.MlflowClient()
    c.create_experiment("proxied", artifact_location="mlflow-artifacts:/proxied")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "proxied")
    r = invoke("train", "--arch", "cnn", "--epochs", "1", "--no-audit", "--model-name", "behind-proxy", ok=False)
    assert r.exit_code == 1 and "pass --store-uri" in r.output and "'proxied'" in r.output, r.output
    exp = c.get_experiment_by_name("proxied")
    assert c.search_runs([exp.experiment_id]) == []
