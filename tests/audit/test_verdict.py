"""The verdict rule, the matched figures table and the per-record statistics (pure parts)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlflow_amnesia.audit import verdict as V
from mlflow_amnesia.audit.membership import MembershipScores
from mlflow_amnesia.audit.metrics import MIN_PER_CLASS, Estimate
from mlflow_amnesia.audit.privacy import write_per_record
from mlflow_amnesia.mlflow import registry


def E(value, lo, hi, m=100, n=250):
    return Estimate(value, lo, hi, m, n)


LEAKS = E(0.70, 0.63, 0.77)  # the parent on the forgotten records: detectable
CHANCE = E(0.50, 0.42, 0.58)
CONTROL = E(0.68, 0.62, 0.74)  # retained records in the child: the attack still works


def verdict(**kw):
    base = dict(parent=LEAKS, child=CHANCE, retain=CONTROL, n_forgotten=100, n_nonmembers=250)
    return V.forget_verdict(**{**base, **kw})


def test_detectable_means_reportable_with_the_interval_above_one_half():
    assert V.detectable(LEAKS) and not V.detectable(CHANCE) and not V.detectable(None)
    assert not V.detectable(E(0.60, 0.50, 0.70))  # touching 0.5 is not above it
    assert not V.detectable(E(0.99, 0.95, 1.0, m=MIN_PER_CLASS - 1))  # too few records to be an AUC


def test_the_forget_rule_case_by_case():
    v = verdict()
    assert v.outcome == V.PASS and "0.50 [0.42, 0.58]" in v.reason and "0.70 [0.63, 0.77]" in v.reason
    # the parent never leaked on these records: the test had no power
    v = verdict(parent=CHANCE, child=CHANCE)
    assert v.outcome == V.INCONCLUSIVE and v.reason.startswith("the parent shows no detectable membership")
    assert "LiRA AUC 0.50 [0.42, 0.58]" in v.reason
    # the child still leaks: fail, whatever the control says
    assert verdict(child=E(0.69, 0.62, 0.76)).outcome == V.FAIL
    assert verdict(child=E(0.69, 0.62, 0.76), retain=CHANCE).outcome == V.FAIL
    # silence on the forgotten records while the attack is deaf on retained ones proves nothing
    v = verdict(retain=CHANCE)
    assert v.outcome == V.INCONCLUSIVE and "retained-records control" in v.reason
    assert verdict(retain=None).outcome == V.INCONCLUSIVE
    # the child's interval holds both chance and the parent's figure: too few records to tell
    v = verdict(child=E(0.55, 0.40, 0.71))
    assert v.outcome == V.INCONCLUSIVE and "reaches the parent's AUC" in v.reason
    # too few forgotten records for any AUC; figures missing (no audit)
    v = verdict(n_forgotten=3)
    assert v.outcome == V.INCONCLUSIVE and "too few for an AUC" in v.reason and "per_record.json" in v.reason
    assert verdict(parent=None).outcome == V.INCONCLUSIVE
    assert "\n" not in "".join(verdict(**kw).reason for kw in ({}, {"parent": CHANCE}, {"n_forgotten": 1}))


def test_ulira_decides_when_present_and_the_dual_view_names_the_purge():
    # U-LiRA overrides the LiRA rule: it can fail a child LiRA would pass, and pass one it would not
    assert verdict(ulira=E(0.66, 0.58, 0.74)).outcome == V.FAIL
    v = verdict(child=E(0.56, 0.49, 0.63), retain=CHANCE, ulira=E(0.51, 0.44, 0.58))
    assert v.outcome == V.PASS and "U-LiRA AUC 0.51" in v.reason
    assert verdict(ulira=E(0.55, 0.45, 0.72)).outcome == V.INCONCLUSIVE  # its interval reaches the parent's
    assert verdict(parent=CHANCE, ulira=E(0.5, 0.45, 0.55)).outcome == V.INCONCLUSIVE  # still needs power
    assert verdict(ulira=E(0.9, 0.5, 1.0, m=3)).outcome == V.PASS  # not reportable: LiRA decides
    # the dual view adds the purge advice; the outcome stays the child's own
    v = verdict(dualview=E(0.69, 0.61, 0.77), parent_ref="--model m --version 1")
    assert v.outcome == V.PASS and "must not stay queryable" in v.reason
    assert "`mlflow-amnesia purge --model m --version 1`" in v.reason and "forget --purge" in v.reason
    assert "queryable" not in verdict(dualview=CHANCE).reason


def test_train_versions_get_n_a_saying_whether_membership_is_detectable():
    v = V.train_verdict(LEAKS)
    assert v.outcome == V.NOT_APPLICABLE and "is detectable" in v.reason
    assert "not detectable" in V.train_verdict(CHANCE).reason
    assert "no membership audit" in V.train_verdict(None).reason


def test_verdict_from_logged_metrics_reads_the_estimates_and_later_figures():
    m = {"audit.n_targets": 100.0, "audit.n_nonmembers": 250.0}
    m |= LEAKS.as_metrics("audit.parent.lira.auc") | CHANCE.as_metrics("audit.lira.auc")
    m |= CONTROL.as_metrics("audit.retain.lira.auc")
    assert V.verdict_from_metrics(m, forget=True).outcome == V.PASS
    assert V.estimate_from_metrics(m, "audit.lira.auc") == CHANCE
    assert V.estimate_from_metrics({"audit.lira.auc": 0.5}, "audit.lira.auc") is None  # no interval: not one
    # U-LiRA logged by a later audit (audit-ulira's audit.ulira.auc) is used without code here changing
    assert V.verdict_from_metrics(m | E(0.7, 0.6, 0.8).as_metrics("audit.ulira.auc"), forget=True).outcome == V.FAIL
    assert V.verdict_from_metrics(m, forget=True, ulira=E(0.7, 0.6, 0.8)).outcome == V.FAIL
    assert V.verdict_from_metrics({}, forget=True).outcome == V.INCONCLUSIVE  # --no-audit
    assert V.verdict_from_metrics(m, forget=False).outcome == V.NOT_APPLICABLE


def test_the_forget_table_sets_side_by_side_only_figures_on_the_same_records():
    """The defect: the ``change`` column set the child on its forgotten records beside the parent
    on 200 random training records (its own run's figure). Now the parent's column is the parent
    measured in the child's audit, on the same records; the parent run's sample figure is never used."""
    child = {"acc.test": 0.90, "acc.parent.test": 0.95, "acc.forget": 0.5, "acc.parent.forget": 1.0}
    child |= E(0.458, 0.40, 0.52, m=20).as_metrics("audit.lira.auc")
    child |= E(0.431, 0.37, 0.49, m=20).as_metrics("audit.parent.lira.auc")
    parent_run = {"acc.test": 0.95, "audit.lira.auc": 0.505, "acc.forget": 0.3, "acc.retain": 0.99}
    table = registry.forget_table(2, 1, child, parent_run)
    lines = table.splitlines()
    assert lines[0] == "| metric | v2 | v1 (parent) | change |"
    lira = next(ln for ln in lines if ln.startswith("| audit.lira.auc "))
    assert lira == "| audit.lira.auc (n=20+250) | 0.4580 [0.4000, 0.5200] | 0.4310 [0.3700, 0.4900] | +0.0270 |"
    assert "0.505" not in table  # the parent run's own (sample) figure is not set beside it
    assert "| acc.forget | 0.5000 | 1.0000 | -0.5000 |" in lines
    assert "| acc.test | 0.9000 | 0.9500 | -0.0500 |" in lines
    # a figure the child's audit did not measure on the parent gets no parent cell and no change
    assert "| acc.retain | 0.9000 | – | – |" in registry.forget_table(2, 1, {"acc.retain": 0.9}, parent_run).splitlines()
    # the held-out records never change: the parent run's acc.test is matched and used as a fallback
    assert "| acc.test | 0.9000 | 0.9500 | -0.0500 |" in registry.forget_table(2, 1, {"acc.test": 0.9}, parent_run)


def test_the_verdict_line_is_the_first_paragraph_and_is_replaced_not_doubled():
    v = V.Verdict(V.PASS, "because")
    desc = registry.set_verdict_line("**m v2** forgets\n\n| metric |", registry.verdict_line(v))
    assert desc.splitlines()[0] == "**Audit verdict: pass** — because"
    again = registry.set_verdict_line(desc, registry.verdict_line(V.Verdict(V.FAIL, "now")))
    assert again.count("**Audit verdict:") == 1 and again.startswith("**Audit verdict: fail** — now")
    purged = registry.set_verdict_line("**Purged** on ...\n\n" + again, registry.verdict_line(v))
    assert purged.startswith("**Purged**") and purged.split("\n\n")[1] == "**Audit verdict: pass** — because"


def _scores(n, online=True, seed=0):
    rng = np.random.default_rng(seed)
    return MembershipScores(np.arange(n), rng.random(n), rng.normal(size=n), "online" if online else "offline",
                            rng.normal(size=n), rng.random(n))


def test_per_record_artifact_names_records_by_keyed_hash_only(tmp_path):
    from mlflow_amnesia.keys import hash_ids

    key = bytes(range(32))
    ids = ["idx:t10k:17", "idx:t10k:4242", "idx:t10k:9"]
    hashes = [h.tobytes().hex() for h in hash_ids(ids, key)]
    child, parent = _scores(3), _scores(3, seed=1)
    path = tmp_path / "per_record.json"
    write_per_record(str(path), child, parent, hashes, n_nonmembers=250, shadows=8)
    text = path.read_text()
    doc = json.loads(text)
    assert [r["record"] for r in doc["records"]] == hashes and doc["lira_variant"] == "online"
    assert doc["records"][1]["child"]["lira_log_lr"] == pytest.approx(child.lira[1])
    assert doc["records"][1]["parent"]["p_out"] == pytest.approx(parent.p_out[1])
    assert not any(rid in text for rid in ids) and "idx:" not in text
    offline = tmp_path / "offline.json"
    write_per_record(str(offline), _scores(2, online=False), None, hashes[:2], n_nonmembers=250, shadows=8)
    rec = json.loads(offline.read_text())["records"][0]
    assert rec["child"]["lira_log_lr"] is None and rec["child"]["lira_z_out"] is not None and rec["parent"] is None
    with pytest.raises(ValueError, match="2 record hashes for 3"):
        write_per_record(str(offline), child, None, hashes[:2], n_nonmembers=250, shadows=8)


def test_the_lineage_picture_and_text_show_each_versions_verdict():
    from mlflow_amnesia.jobs.lineage import node_label, render_text

    rows = [{"version": 1, "parent": None, "method": "train", "repair": None, "n_records": 0, "steps_rolled_back": 0,
             "steps_total": 24, "forget_request": None, "superseded_by": None, "aliases": [], "purged": None,
             "purge_started": None, "run_id": None, "metrics": {}, "verdict": "n/a"}]
    rows.append({**rows[0], "version": 2, "parent": 1, "method": "amnesiac", "n_records": 12, "verdict": "fail"})
    assert "audit verdict: fail" in node_label(rows[1], rows) and "audit verdict: n/a" in node_label(rows[0], rows)
    text = render_text("m", rows)
    assert "verdict n/a" in text and "verdict fail" in text
    assert "verdict" not in node_label({**rows[1], "verdict": None}, rows)


def test_the_bootstraps_fast_tpr_equals_tpr_at_fpr_ties_included():
    """tpr_estimate's resamples use a partition instead of a sort (12 TPR intervals a forget):
    it must give exactly tpr_at_fpr's figure, ties and tiny samples included."""
    import math

    from mlflow_amnesia.audit.metrics import _tpr_at_allowed, tpr_at_fpr

    rng = np.random.default_rng(0)
    for t in range(600):
        m, n = int(rng.integers(1, 40)), int(rng.integers(1, 300))
        draw = (lambda k: rng.integers(0, 6, k).astype(float)) if t % 2 else (lambda k: rng.normal(size=k))
        pos, neg = draw(m), draw(n)
        fpr = (0.0, 0.001, 0.01, 0.05, 0.3, 1.0)[t % 6]
        want = tpr_at_fpr(np.r_[pos, neg], np.r_[np.ones(m, bool), np.zeros(n, bool)], fpr)
        assert float(_tpr_at_allowed(pos, neg, math.floor(fpr * n + 1e-9))) == want, (m, n, fpr)
