"""The product's main path through the CLI: train -> forget -> forget again, on digits.

One tiny training run (conftest's `trained`: small CNN, 2 epochs, f32 codec so the rollback is
checked exactly) is shared by the tests of this module; each test works on its own copy of the
registry (`registry_copy`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import MODEL, invoke


def _invoke(*args: str, ok: bool = True):
    args = list(args)
    if args[0] in ("train", "forget") and not {"--audit", "--help"} & set(args):
        args.append("--no-audit")  # the privacy audit has its own tests below
    return invoke(*args, ok=ok)


def _ids(n: int, *extra: str) -> list[str]:
    r = _invoke("records", "--model", MODEL, "--limit", str(n))
    return r.output.split() + list(extra)


def _write(tmp_path: Path, ids: list[str]) -> str:
    p = tmp_path / "ids.txt"
    p.write_text("\n".join(ids) + "\n")
    return str(p)


def _all_artifact_bytes(root: Path) -> bytes:
    out = []
    for p in root.rglob("*"):
        if p.is_file() and p.name != "ids.txt":  # the request file the user wrote
            out.append(p.read_bytes())
    return b"\n".join(out)


def test_train_registers_version_1_with_tags(registry_copy):
    from mlflow_amnesia.mlflow import registry

    mv = registry.resolve_version(MODEL)
    assert int(mv.version) == 1
    assert mv.tags["amnesia.method"] == "train"
    assert int(mv.tags["amnesia.steps_total"]) > 0
    assert "mlflow-amnesia" in mv.description


def test_forget_chain_is_exact_and_never_stores_ids(registry_copy, trained):
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.mlflow.flavor import load_model
    from mlflow_amnesia.keys import load_key

    ids1 = _ids(3)
    assert len(ids1) == 3
    v1 = load_model("models:/%s/1" % MODEL)
    key = load_key()
    idx = v1.segments[0].open_index(key)
    steps1 = idx.steps_for(ids1)

    _invoke("forget", "--model", MODEL, "--records", _write(registry_copy, ids1), "--yes")
    v2mv = registry.resolve_version(MODEL)
    assert int(v2mv.version) == 2
    t = v2mv.tags
    assert t["amnesia.parent_version"] == "1"
    assert t["amnesia.method"] == "amnesiac"
    assert t["amnesia.n_records"] == "3"
    assert int(t["amnesia.steps_rolled_back"]) == len(steps1)
    assert len(t["amnesia.forget_request"]) >= 32

    # weights equal v1 - sum(deltas of the steps), exactly up to float32 rounding (f32 codec)
    v2 = load_model("models:/%s/2" % MODEL)
    store = v1.segments[0].open_store(load_key())
    sums = store.sum(steps1.tolist())
    for name, t1 in v1.module.state_dict().items():
        t2 = v2.module.state_dict()[name]
        if name in sums:
            expect = (t1.double().numpy() - sums[name].reshape(t1.shape)).astype(np.float32)
            np.testing.assert_array_equal(t2.numpy(), expect, err_msg=name)
    assert set(v2.rolled_back.tolist()) == set(steps1.tolist())

    # forget more, from v2: v3 never re-subtracts a step v2 rolled back
    ids2 = _ids(6)
    ids2 = [i for i in ids2 if i not in ids1][:3]
    assert ids2, "records must list records not yet forgotten"
    r = _invoke("forget", "--model", MODEL, "--records", _write(registry_copy, ids2), "--yes")
    v3 = load_model("models:/%s/3" % MODEL)
    steps2 = set(idx.steps_for(ids2).tolist())
    new = set(v3.rolled_back.tolist()) - set(v2.rolled_back.tolist())
    assert new == steps2 - set(steps1.tolist())
    mv3 = registry.resolve_version(MODEL)
    assert mv3.tags["amnesia.parent_version"] == "2"
    assert int(mv3.tags["amnesia.steps_rolled_back"]) == len(new)
    assert registry.resolve_version(MODEL, version=2).tags["amnesia.superseded_by"] == "3"

    # the ids never appear in clear text: not in tags, descriptions, or any artifact
    c = registry.client()
    for v in ("1", "2", "3"):
        mv = c.get_model_version(MODEL, v)
        text = json.dumps(mv.tags) + (mv.description or "")
        run = c.get_run(mv.run_id)
        text += json.dumps(run.data.params) + json.dumps(run.data.tags)
        for rid in ids1 + ids2:
            assert rid not in text
    blob = _all_artifact_bytes(trained) + _all_artifact_bytes(registry_copy)  # incl. the sqlite db
    for rid in ids1 + ids2:
        assert rid.encode() not in blob

    # lineage shows the chain
    out = _invoke("lineage", "--model", MODEL).output
    assert "v1" in out and "v2" in out and "v3" in out and "amnesiac" in out
    rows = json.loads(_invoke("lineage", "--model", MODEL, "--format", "json").output)
    assert [r["parent"] for r in rows] == [None, 1, 2]


def test_dry_run_registers_nothing(registry_copy):
    from mlflow_amnesia.mlflow import registry

    r = _invoke("forget", "--model", MODEL, "--records", _write(registry_copy, _ids(2)), "--dry-run")
    assert "dry run" in r.output
    assert int(registry.resolve_version(MODEL).version) == 1


def test_share_threshold_refuses_without_yes(registry_copy):
    from mlflow_amnesia.mlflow import registry

    r = _invoke("forget", "--model", MODEL, "--records", _write(registry_copy, _ids(1)), ok=False)
    assert r.exit_code == 1
    assert "--yes" in r.output and "max-step-share" in r.output
    assert int(registry.resolve_version(MODEL).version) == 1


def test_forget_with_finetune_repair_records_new_segment(registry_copy):
    from mlflow_amnesia.mlflow.flavor import load_model

    ids = _ids(2)
    _invoke("forget", "--model", MODEL, "--records", _write(registry_copy, ids), "--yes", "--repair", "finetune")
    v2 = load_model("models:/%s/2" % MODEL)
    assert [s.role for s in v2.segments] == ["train", "repair"]
    rep = v2.segments[1]
    assert rep.first_step == v2.segments[0].last_step + 1 and rep.n_steps > 0
    # the repair never fed a forgotten record
    from mlflow_amnesia.keys import load_key

    ridx = rep.open_index(load_key())
    assert not ridx.contains(ids).any()


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "does not exist"),
        (b"", "no record ids"),
        (b"# only a comment\n\n", "no record ids"),
        (b"\x00\x01\x02binary", "binary"),
        (b"digits:1\n\xff\xfe\n", "UTF-8"),
    ],
)
def test_bad_ids_files(registry_copy, content, needle):
    from mlflow_amnesia.mlflow import registry

    p = registry_copy / "bad.txt"
    if content is not None:
        p.write_bytes(content)
    r = _invoke("forget", "--model", MODEL, "--records", str(p), "--yes", ok=False)
    assert r.exit_code == 1 and needle in r.output, r.output
    assert str(p) in r.output
    assert int(registry.resolve_version(MODEL).version) == 1


def test_unknown_ids_are_listed(registry_copy):
    from mlflow_amnesia.mlflow import registry

    r = _invoke("forget", "--model", MODEL, "--records",
                _write(registry_copy, _ids(1, "digits:999999", "nobody@example.com")), "--yes", ok=False)
    assert r.exit_code == 1
    assert "'digits:999999'" in r.output and "'nobody@example.com'" in r.output
    assert int(registry.resolve_version(MODEL).version) == 1


def test_unknown_model_version_and_class(registry_copy):
    r = _invoke("forget", "--model", "no-such-model", "--records", "x", ok=False)
    assert r.exit_code == 1 and "no registered model named 'no-such-model'" in r.output
    r = _invoke("forget", "--model", MODEL, "--version", "7", "--class", "3", ok=False)
    assert r.exit_code == 1 and "no version 7" in r.output
    r = _invoke("forget", "--model", MODEL, "--class", "eleven", "--yes", ok=False)
    assert r.exit_code == 1 and "unknown class 'eleven'" in r.output


def test_wrong_key_is_a_clear_error(registry_copy, monkeypatch):
    monkeypatch.setenv("MLFLOW_AMNESIA_KEY", "33" * 32)
    r = _invoke("forget", "--model", MODEL, "--records", _write(registry_copy, ["digits:1"]), "--yes", ok=False)
    assert r.exit_code == 1 and "key" in r.output.lower()


def test_help_on_every_command():
    for cmd in ("train", "forget", "audit", "lineage", "records", "verify"):
        r = _invoke(cmd, "--help")
        assert "Usage" in r.output and len(r.output) > 200


def test_alias_moves_and_forget_by_alias(registry_copy):
    from mlflow_amnesia.mlflow import registry

    ids = _ids(4)
    _invoke("forget", "--model", MODEL, "--records", _write(registry_copy, ids[:1]), "--yes", "--set-alias", "production")
    assert int(registry.resolve_version(MODEL, alias="production").version) == 2
    assert registry.resolve_version(MODEL, version=1).tags["amnesia.superseded_by"] == "2"
    _invoke("forget", "--model", MODEL, "--alias", "production", "--records", _write(registry_copy, ids[1:2]), "--yes",
            "--set-alias", "production")
    mv = registry.resolve_version(MODEL, alias="production")
    assert int(mv.version) == 3 and mv.tags["amnesia.parent_version"] == "2"
    # forgetting from a superseded version would resurrect v2's forgotten records: refused
    r = _invoke("forget", "--model", MODEL, "--version", "1", "--records", _write(registry_copy, ids[2:3]), "--yes", ok=False)
    assert r.exit_code == 1 and "superseded by v2" in r.output


def test_forget_class_dry_run_counts_the_class(registry_copy):
    from mlflow_amnesia.learning.data import class_records, load_dataset, split

    r = _invoke("forget", "--model", MODEL, "--class", "3", "--dry-run")
    recs = load_dataset("digits")
    sp = split(recs, seed=0)
    n = len(np.intersect1d(class_records(recs, 3), sp.train))
    assert f"{n} record(s) to forget" in r.output


def test_already_forgotten_records_are_skipped(registry_copy):
    ids = _ids(2)
    _invoke("forget", "--model", MODEL, "--records", _write(registry_copy, ids[:1]), "--yes")
    # `records` no longer lists the forgotten record
    assert ids[0] not in _invoke("records", "--model", MODEL).output.split()
    r = _invoke("forget", "--model", MODEL, "--records", _write(registry_copy, ids[:1]), "--yes", ok=False)
    assert r.exit_code == 1 and "already forgotten" in r.output


def test_training_state_is_kept_losslessly(registry_copy):
    from mlflow_amnesia.mlflow.flavor import load_model
    from mlflow_amnesia.keys import load_key
    from mlflow_amnesia.mlflow.runs import load_array, load_state
    from mlflow_amnesia.learning.data import load_dataset, split
    from mlflow_amnesia.learning.training import epoch_orders

    v1 = load_model("models:/%s/1" % MODEL)
    url, key = v1.info["training_url"], load_key()
    init = load_state(f"{url}/initial_state.pt", key=key)
    opt = load_state(f"{url}/optimizer_state.pt", key=key)
    order = load_array(f"{url}/batch_order.npy", key=key)
    assert set(init) == set(v1.module.state_dict())
    assert opt["state"] and "momentum_buffer" in next(iter(opt["state"].values()))
    recs = load_dataset("digits")
    sp = split(recs, seed=v1.info["recipe"]["seed"])
    np.testing.assert_array_equal(order, epoch_orders(sp.train, v1.info["recipe"]["seed"], v1.info["recipe"]["epochs"], key=key))
    assert v1.info["order"] == "keyed-v2"
    # the whole store rolled back returns the initial weights (f32 codec: float rounding only)
    store = v1.segments[0].open_store(key)
    sums = store.sum(store.steps)
    for name, t in v1.module.state_dict().items():
        if name in sums:
            back = t.double().numpy() - sums[name].reshape(t.shape)
            np.testing.assert_allclose(back, init[name].double().numpy(), rtol=0, atol=2e-6, err_msg=name)


def test_store_uri_option(tmp_path, monkeypatch):
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.mlflow.flavor import load_model

    monkeypatch.chdir(tmp_path)
    _invoke("train", "--arch", "cnn", "--epochs", "1", "--batch-size", "256", "--store-uri", str(tmp_path / "stores"),
            "--model-name", "custom-store")
    mv = registry.resolve_version("custom-store")
    am = load_model(registry.model_uri(mv))
    assert am.segments[0].store_url == f"{tmp_path / 'stores'}/{mv.run_id}/deltas"
    assert (tmp_path / "stores" / mv.run_id / "deltas" / "manifest.json").exists()


AUDIT_NAMES = ["audit.mia.auc", "audit.mia.recall", "audit.mia.precision", "audit.mia.tpr_at_1pct_fpr",
               "audit.mia.tpr_at_0.1pct_fpr", "audit.lira.auc", "audit.lira.tpr_at_1pct_fpr",
               "audit.lira.tpr_at_0.1pct_fpr", "acc.test", "acc.forget", "acc.retain", "audit.inversion.score"]


def test_forget_and_audit_log_the_privacy_audit(registry_copy):
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.audit.privacy import SHADOW_EXPERIMENT

    small = ["--audit", "--shadows", "2", "--inversion-iterations", "30"]
    _invoke("forget", "--model", MODEL, "--records", _write(registry_copy, _ids(12)), "--yes", *small)
    c = registry.client()
    mv = registry.resolve_version(MODEL)
    run = c.get_run(mv.run_id)
    for name in AUDIT_NAMES:
        assert name in run.data.metrics, name
    assert 0.0 <= run.data.metrics["audit.lira.auc"] <= 1.0
    for name in ("audit.lira.auc", "audit.parent.lira.auc", "audit.retain.lira.auc", "audit.mia.tpr_at_1pct_fpr"):
        for suffix in (".lo", ".hi", ".n_members", ".n_nonmembers"):
            assert name + suffix in run.data.metrics, name + suffix
    assert run.data.metrics["audit.lira.auc.n_members"] == run.data.metrics["audit.parent.lira.auc.n_members"] == 12
    assert "audit.lira.auc (n=12+" in mv.description and "(parent)" in mv.description
    assert mv.tags[registry.TAG_VERDICT] in ("pass", "fail", "inconclusive")
    assert sorted(a.path for a in c.list_artifacts(mv.run_id, "audit")) == ["audit/inversion.png", "audit/per_record.json"]
    # the forget's classes are inverted under the child and the parent (the same classes: matched)
    assert {"audit.inversion.score", "audit.parent.inversion.score"} <= set(run.data.metrics)

    # `audit` of the version the forget just audited, with its settings: the logged figures, not a second audit
    r = _invoke("audit", "--model", MODEL, "--shadows", "2", "--inversion-iterations", "30")
    assert r.output.startswith(f"audit of {MODEL} v{mv.version} (models:/{MODEL}/{mv.version})"), r.output
    assert "already audited with these settings" in r.output and "--force" in r.output, r.output
    assert f"audit.lira.auc\t{run.data.metrics['audit.lira.auc']:.4f}" in r.output, r.output
    assert len(c.get_metric_history(mv.run_id, "audit.lira.auc")) == 1
    # other settings, or --force: computed again (and logged again)
    r = _invoke("audit", "--model", MODEL, "--shadows", "2", "--inversion-iterations", "30", "--force")
    assert "already audited" not in r.output and len(c.get_metric_history(mv.run_id, "audit.lira.auc")) == 2
    r = _invoke("audit", "--model", MODEL, "--shadows", "2", "--inversion", "off")
    assert "already audited" not in r.output and "audit.inversion.score" not in r.output, r.output
    assert len(c.get_metric_history(mv.run_id, "audit.lira.auc")) == 3

    # a later audit of version 1 logs to the train run and reuses the cached shadow models; a
    # version that forgot nothing is not inverted unless asked (--inversion on)
    r = _invoke("audit", "--model", MODEL, "--version", "1", "--shadows", "2", "--inversion-iterations", "30")
    assert "audit.lira.auc" in r.output and "audit.inversion.score" not in r.output, r.output
    v1 = registry.resolve_version(MODEL, version=1)
    assert "audit.mia.auc" in c.get_run(v1.run_id).data.metrics
    assert "audit.lira.auc" in v1.description
    exp = c.get_experiment_by_name(SHADOW_EXPERIMENT)
    runs = c.search_runs([exp.experiment_id])
    # one assembled pool and its 2 members (one run each), none trained twice
    assert sum("amnesia.shadow_key" in r.data.tags for r in runs) == 1
    assert sorted(r.data.tags.get("amnesia.shadow_member", "") for r in runs) == ["", "0", "1"]


def test_audit_of_a_forget_runs_u_lira_as_the_forget_did(registry_copy):
    """`audit --force` of a forget's version runs U-LiRA on the (recorded) shadow pool with the
    request's method, read from the forget run, and gets the forget's own figure again."""
    from mlflow_amnesia.mlflow import registry

    audit = ["--shadows", "4", "--inversion", "off"]
    _invoke("forget", "--model", MODEL, "--records", _write(registry_copy, _ids(12)), "--yes", "--audit", *audit)
    c = registry.client()
    mv = registry.resolve_version(MODEL)
    first = c.get_run(mv.run_id).data.metrics
    assert first["audit.ulira.auc.n_members"] >= 10, first  # 12 records, each in 2 of the 4 shadows
    _invoke("audit", "--model", MODEL, *audit, "--force")
    history = c.get_metric_history(mv.run_id, "audit.ulira.auc")
    assert len(history) == 2 and history[1].value == pytest.approx(history[0].value, abs=1e-9)
    assert "audit/ulira.json" in {a.path for a in c.list_artifacts(mv.run_id, "audit")}
