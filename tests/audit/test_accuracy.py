"""The accuracy figures of an audit: ``acc.retain`` on a seeded sample with its size, and a
``--no-audit`` forget measuring its parent on the forgotten records only and itself on the held-out
and forgotten ones (``acc.retain`` is then the next audit's)."""

from __future__ import annotations

import numpy as np
import torch

import mlflow_amnesia.audit as audit
from mlflow_amnesia.learning.data import Records, Split


def _world(n: int = 60):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 2, 2, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    recs = Records(np.array([f"r{i}" for i in range(n)]), x, y, ["a", "b"], {"spec": "toy", "fingerprint": "0"})
    sp = Split(np.arange(0, 40, dtype=np.int64), np.arange(40, n, dtype=np.int64), {})
    child, parent = (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)) for _ in range(2))
    return recs, sp, child, parent


def test_the_retain_sample_is_all_records_up_to_the_limit_else_a_fixed_seeded_sample():
    r = np.arange(100, 400, dtype=np.int64)
    assert np.array_equal(audit.retain_sample(r, limit=300), r)
    s = audit.retain_sample(r, limit=50)
    assert len(s) == 50 and np.all(np.diff(s) > 0) and set(s) <= set(r)
    assert np.array_equal(s, audit.retain_sample(r, limit=50))  # the same set, the same sample
    assert not np.array_equal(s, audit.retain_sample(r[1:], limit=50))  # another set, another draw


def test_acc_retain_carries_its_size_and_child_and_parent_share_the_sample(monkeypatch):
    recs, sp, child, parent = _world()
    forget = np.array([3, 7], np.int64)
    m = audit.full_audit(child, recs, sp, forget, forget, arch_spec={}, recipe={}, privacy=False)
    assert m["acc.retain.n"] == 38.0
    monkeypatch.setattr(audit.privacy, "RETAIN_SAMPLE", 10)
    m = audit.full_audit(child, recs, sp, forget, forget, arch_spec={}, recipe={}, privacy=False)
    assert m["acc.retain.n"] == 10.0
    sample = audit.retain_sample(np.setdiff1d(sp.train, forget), limit=10)
    acc, _ = audit.evaluate(child, recs.x[sample], recs.y[sample])
    assert m["acc.retain"] == acc


def test_without_the_privacy_audit_the_parent_is_measured_on_the_forgotten_records_only():
    recs, sp, child, parent = _world()
    forget = np.array([3, 7], np.int64)
    quick = audit.full_audit(child, recs, sp, forget, forget, arch_spec={}, recipe={}, privacy=False,
                             parent_module=parent)
    assert {k for k in quick if ".parent." in k} == {"acc.parent.forget", "loss.parent.forget"}
    acc, _ = audit.evaluate(parent, recs.x[forget], recs.y[forget])
    assert quick["acc.parent.forget"] == acc
    assert {"acc.test", "acc.retain", "acc.forget"} <= set(quick)


def test_a_forget_without_the_audit_leaves_the_retained_records_pass_to_the_audit():
    from mlflow_amnesia.audit.privacy import AuditSettings

    recs, sp, child, parent = _world()
    forget = np.array([3, 7], np.int64)
    quick = audit.full_audit(child, recs, sp, forget, forget, arch_spec={}, recipe={}, privacy=False,
                             parent_module=parent, retained=False)
    assert set(quick) == {"acc.test", "loss.test", "acc.forget", "loss.forget", "acc.parent.forget",
                          "loss.parent.forget"}
    full = audit.full_audit(child, recs, sp, forget, forget, arch_spec={}, recipe={}, privacy=False)
    assert {k: full[k] for k in ("acc.test", "acc.forget")} == {k: quick[k] for k in ("acc.test", "acc.forget")}
    # what an accuracy-only audit computes is another fingerprint: `audit --accuracy-only` does not
    # take the forget's figures for its own and measures acc.retain
    s = AuditSettings()
    assert s.fingerprint({}, [1, 8, 8], privacy=False, forgot=True, retained=False) != s.fingerprint(
        {}, [1, 8, 8], privacy=False, forgot=True)


def test_the_acc_retain_cap_is_part_of_what_an_audit_computes(monkeypatch):
    """An audit logged under another cap on acc.retain's sample (another release) measured another
    figure: `audit` must measure again rather than show it as this settings' figures."""
    from mlflow_amnesia.audit import privacy

    s = privacy.AuditSettings()
    before = [s.fingerprint({}, [1, 8, 8], privacy=p, forgot=True) for p in (False, True)]
    quick = s.fingerprint({}, [1, 8, 8], privacy=False, forgot=True, retained=False)
    monkeypatch.setattr(privacy, "RETAIN_SAMPLE", 10)
    after = [s.fingerprint({}, [1, 8, 8], privacy=p, forgot=True) for p in (False, True)]
    assert before[0] != after[0] and before[1] != after[1]
    assert s.fingerprint({}, [1, 8, 8], privacy=False, forgot=True, retained=False) == quick  # no acc.retain


def test_inference_batches_on_a_cpu_keep_a_batch_of_activations_in_cache():
    from mlflow_amnesia.learning.training import inference_batch_size

    def rows(*shape: int, device: str | None = None) -> int:
        return inference_batch_size(torch.empty(0, *shape), device)

    assert rows(1, 8, 8) == 512  # the default data set: the batch the audit always used
    assert rows(1, 28, 28) == 64 and rows(3, 32, 32) == 64  # MNIST, CIFAR: 6.3 -> 4.4 s for CIFAR (bench/inference_batch.py)
    assert rows(3, 224, 224) == 32 and rows(3, 100, 100) == 32  # never below 32
    assert rows(64) == 512  # no spatial extent: tabular rows
    assert rows(3, 32, 32, device="cuda") == 512  # an accelerator keeps big batches
    recs, sp, child, _ = _world()
    x, y = recs.x[sp.holdout], recs.y[sp.holdout]
    assert audit.evaluate(child, x, y) == audit.evaluate(child, x, y, batch_size=512)  # 2x2 inputs: 512
