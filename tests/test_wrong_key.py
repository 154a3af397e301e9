"""Every command that hashes record ids first checks the key id the version was built with
(keys.load_key_for): a wrong key is one clear error naming both key ids, never a silent
result computed with the wrong hashes. And an accuracy-only audit keeps the table's other rows.
"""

from __future__ import annotations

import pytest
from helpers import KEY, MODEL, invoke

WRONG = "33" * 32


def _key_ids() -> tuple[str, str]:
    from mlflow_amnesia.keys import key_id

    return key_id(bytes.fromhex(KEY)), key_id(bytes.fromhex(WRONG))


def _refused_for_the_key(r) -> None:
    right, wrong = _key_ids()
    assert r.exit_code == 1, r.output
    assert right in r.output and wrong in r.output, r.output
    assert "MLFLOW_AMNESIA_KEY" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


@pytest.fixture
def forgotten(registry_copy):
    """v2 forgot two records (the right key)."""
    ids = invoke("records", "--model", MODEL, "--limit", "2").output.split()
    (registry_copy / "ids.txt").write_text("\n".join(ids) + "\n")
    invoke("forget", "--model", MODEL, "--records", str(registry_copy / "ids.txt"), "--yes", "--no-audit")
    return ids


def test_records_with_a_wrong_key_is_refused(forgotten, monkeypatch):
    monkeypatch.setenv("MLFLOW_AMNESIA_KEY", WRONG)
    _refused_for_the_key(invoke("records", "--model", MODEL, ok=False))


def test_records_with_the_right_key_leaves_the_forgotten_out(forgotten):
    listed = invoke("records", "--model", MODEL).output.split()
    assert listed and not set(forgotten) & set(listed)


def test_audit_with_a_wrong_key_is_refused_and_logs_nothing(forgotten, monkeypatch):
    from mlflow_amnesia.mlflow import registry

    mv = registry.resolve_version(MODEL)
    before = (dict(registry.client().get_run(mv.run_id).data.metrics), mv.description)
    monkeypatch.setenv("MLFLOW_AMNESIA_KEY", WRONG)
    _refused_for_the_key(invoke("audit", "--model", MODEL, "--accuracy-only", ok=False))
    mv = registry.resolve_version(MODEL)
    assert (dict(registry.client().get_run(mv.run_id).data.metrics), mv.description) == before


def test_forget_and_purge_with_a_wrong_key_are_refused(forgotten, monkeypatch, tmp_path):
    (tmp_path / "more.txt").write_text("digits:1\n")
    monkeypatch.setenv("MLFLOW_AMNESIA_KEY", WRONG)
    _refused_for_the_key(invoke("forget", "--model", MODEL, "--records", str(tmp_path / "more.txt"), "--yes",
                                "--no-audit", ok=False))
    _refused_for_the_key(invoke("purge", "--model", MODEL, "--version", "1", "--yes", ok=False))


def test_evaluator_plugin_refuses_a_wrong_key(forgotten, monkeypatch):
    from mlflow_amnesia.audit import audit_model
    from mlflow_amnesia.errors import RecordKeyError
    from mlflow_amnesia.mlflow.flavor import load_model

    am = load_model(f"models:/{MODEL}/2")
    monkeypatch.setenv("MLFLOW_AMNESIA_KEY", WRONG)
    with pytest.raises(RecordKeyError, match=_key_ids()[0]):
        audit_model(am, privacy=False)  # what the amnesia-privacy evaluator runs


def test_load_key_for_names_both_key_ids_and_the_fix(monkeypatch):
    from mlflow_amnesia.errors import RecordKeyError
    from mlflow_amnesia.keys import load_key_for

    right, wrong = _key_ids()
    monkeypatch.setenv("MLFLOW_AMNESIA_KEY", KEY)
    assert load_key_for(right, "m v1") == bytes.fromhex(KEY)
    assert load_key_for(None, "m v1") == bytes.fromhex(KEY)  # a version that recorded no key id: not checked
    monkeypatch.setenv("MLFLOW_AMNESIA_KEY", WRONG)
    with pytest.raises(RecordKeyError) as e:
        load_key_for(right, "m v1")
    assert right in str(e.value) and wrong in str(e.value) and "m v1" in str(e.value)
    monkeypatch.delenv("MLFLOW_AMNESIA_KEY")
    with pytest.raises(RecordKeyError, match=f"no record-hashing key.*m v1 .*{right}"):
        load_key_for(right, "m v1")


def test_an_accuracy_only_audit_keeps_the_other_rows_of_the_table(registry_copy):
    from mlflow_amnesia.mlflow import registry

    c = registry.client()
    mv = registry.resolve_version(MODEL)
    c.log_metric(mv.run_id, "audit.mia.auc", 0.6123)  # as a privacy audit logged it before
    c.update_model_version(MODEL, mv.version, description=registry.replace_table(
        mv.description, registry.metrics_table({f"v{mv.version}": registry.run_metrics(mv.run_id)})))
    assert "| audit.mia.auc | 0.6123 |" in registry.resolve_version(MODEL).description
    invoke("audit", "--model", MODEL, "--accuracy-only")
    desc = registry.resolve_version(MODEL).description
    assert "| audit.mia.auc | 0.6123 |" in desc and "| acc.retain |" in desc
