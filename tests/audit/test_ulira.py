"""U-LiRA and the dual view (audit/ulira.py, audit/dualview.py) and the recorded shadow pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlflow_amnesia.audit.dualview import dualview_from_pairs
from mlflow_amnesia.audit.metrics import auc_estimate
from mlflow_amnesia.audit.shadow import balanced_membership
from mlflow_amnesia.audit.ulira import UnlearnSpec, ulira_audit, ulira_scores, unlearn_member
from mlflow_amnesia.errors import InputError

KEY = bytes.fromhex("11" * 32)


def _toy(shift: float, seed: int = 0, S: int = 16, n: int = 40):
    rng = np.random.default_rng(seed)
    member = balanced_membership(S, n, seed)
    base = rng.normal(0, 3, size=n)  # per-record difficulty
    values = base + rng.normal(0, 1, size=(S, n)) + shift * member
    return values, member


def test_ulira_scores_tell_not_unlearned_from_out_and_exact_from_nothing():
    values, member = _toy(shift=2.0)
    s = ulira_scores(values, member)[0]
    assert auc_estimate(s.ravel(), member.ravel()).value > 0.85
    values, member = _toy(shift=0.0)  # unlearned exactly: distributed like OUT
    est = auc_estimate(ulira_scores(values, member)[0].ravel(), member.ravel())
    assert abs(est.value - 0.5) < 0.08 and est.lo < 0.5 < est.hi


def test_ulira_scores_need_two_shadows_a_side():
    member = np.array([[True], [False], [False]])
    with pytest.raises(InputError, match="fewer than 2 IN-unlearned"):
        ulira_scores(np.zeros((3, 1)), member)


def test_dualview_on_toy_pairs():
    rng = np.random.default_rng(1)
    forgotten = np.ones((8, 5), bool)
    est, dep = dualview_from_pairs(
        rng.normal(1.5, 0.5, (8, 5)), forgotten, rng.normal(0, 0.5, (8, 30)), deployed=(np.full(10, 1.5), np.zeros(30))
    )
    assert est.value > 0.9 and dep is not None and dep.value == 1.0
    est, _ = dualview_from_pairs(rng.normal(0, 0.5, (8, 5)), forgotten, rng.normal(0, 0.5, (8, 30)))
    assert abs(est.value - 0.5) < 0.12


@pytest.fixture(scope="module")
def toy_pool(tmp_path_factory):
    """A recorded pool that leaks: digits, the mlp architecture, 6 members on 60 records each."""
    from mlflow_amnesia.audit.shadow import train_shadows
    from mlflow_amnesia.learning.data import load_dataset, split
    from mlflow_amnesia.learning.models import default_arch_spec

    torch.set_num_threads(1)
    recs = load_dataset("digits")
    sp = split(recs, seed=0, holdout_fraction=0.5)
    pool = np.union1d(sp.train[:60], sp.holdout[:60])
    arch = default_arch_spec("mlp", recs)
    recipe = {"epochs": 20, "batch_size": 8, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "seed": 0}
    d = tmp_path_factory.mktemp("pool")
    shadows = train_shadows(recs, pool, arch, recipe, n_shadows=6, seed=0, key=KEY, directory=d, progress=False)
    return recs, sp, shadows


def _model(shadows, i):
    from mlflow_amnesia.learning.models import build_model

    m = build_model(shadows.arch_spec)
    m.load_state_dict(shadows.states[i])
    return m


@pytest.mark.slow
def test_ulira_on_a_recorded_pool(toy_pool):
    recs, sp, shadows = toy_pool
    f = sp.train[:40]
    slots = shadows.pool_slots(f)
    member = shadows.membership[:, slots]
    # not unlearned at all: the shadows as trained are told from OUT models
    not_unlearned = auc_estimate(ulira_scores(shadows.phi[:, slots], member)[0].ravel(), member.ravel())
    assert not_unlearned.value > 0.62 and not_unlearned.lo > 0.5, not_unlearned
    # an exact retrain (each IN shadow rerun without the records): indistinguishable
    r = ulira_audit(_model(shadows, 0), recs, shadows, f, UnlearnSpec("retrain"), key=KEY, parent=_model(shadows, 0))
    assert abs(r.auc.value - 0.5) < 0.15 and r.auc.lo < 0.5 < r.auc.hi, r.auc
    assert r.auc.n_members == int(member.sum()) and r.auc.n_nonmembers == int((~member).sum())
    assert r.dualview is not None and r.dualview_deployed is not None
    m = r.metrics()
    assert {"audit.ulira.auc", "audit.ulira.auc.lo", "audit.ulira.auc.n_members", "audit.dualview.auc"} <= set(m)
    # per-record scores carry keyed hashes, never ids
    ids = {recs.ids[p] for p in f}
    assert len(r.per_record) == 40 and not ids & {p["record"] for p in r.per_record}
    assert all(len(p["record"]) == 32 for p in r.per_record)


def test_amnesiac_unlearning_of_a_member_is_the_subtraction(toy_pool):
    recs, sp, shadows = toy_pool
    i = 0
    trained = shadows.pool[shadows.membership[i]]
    r = trained[:1]
    m = unlearn_member(shadows, i, r, UnlearnSpec("amnesiac"), recs, key=KEY)
    from mlflow_amnesia.audit.shadow import open_member_recording

    store, index = open_member_recording(shadows.member_dirs[i], KEY)
    steps = index.steps_for([recs.ids[int(r[0])]])
    assert len(steps) == 20  # one step per epoch
    sums = store.sum(steps.tolist())
    for k, v in m.state_dict().items():
        want = shadows.states[i][k] - torch.from_numpy(np.asarray(sums[k])).reshape(v.shape).float()
        assert torch.allclose(v, want, atol=1e-6)
    # a record the member never trained on changes nothing
    outside = shadows.pool[~shadows.membership[i]][:1]
    m2 = unlearn_member(shadows, i, outside, UnlearnSpec("amnesiac"), recs, key=KEY)
    assert all(torch.equal(v, shadows.states[i][k]) for k, v in m2.state_dict().items())
    with pytest.raises(InputError, match="record key"):
        unlearn_member(shadows, i, r, UnlearnSpec("amnesiac"), recs, key=None)
    with pytest.raises(InputError, match="cannot unlearn shadows by method"):
        unlearn_member(shadows, i, r, UnlearnSpec("scrub"), recs, key=KEY)


@pytest.mark.slow
def test_recorded_pool_round_trips_through_the_mlflow_cache(toy_pool, monkeypatch):
    """Members saved as runs, the pool assembled and cached; read back: same weights, same rollback,
    no record id anywhere in the cached files, and a second get trains nothing."""
    import mlflow

    from mlflow_amnesia.audit import pool as pool_mod
    from mlflow_amnesia.audit import shadow as shadow_mod
    from mlflow_amnesia.mlflow.shadow_cache import MlflowShadowCache

    recs, sp, shadows = toy_pool
    cache = MlflowShadowCache()
    key = pool_mod.pool_key(recs, shadows.pool, shadows.arch_spec, shadows.recipe, 6, 0, KEY)
    assert key == shadows.cache_key
    members = [shadow_mod.ShadowMember.load(d) for d in shadows.member_dirs]
    for m in members[:5]:
        cache.save_member(key, m)
    assert pool_mod.missing_members(
        recs, shadows.pool, shadows.arch_spec, shadows.recipe, 6, 0, key=KEY, cache=cache
    ) == [5]
    trained = []
    real = shadow_mod.train_member

    def counting(*a, **kw):
        trained.append(a[6])
        return real(*a, **kw)

    monkeypatch.setattr(shadow_mod, "train_member", counting)
    from mlflow_amnesia.audit.membership import AttackModels

    fit = AttackModels.fit.__func__
    monkeypatch.setattr(AttackModels, "fit", classmethod(lambda cls, *a, **kw: fit(cls, *a, **{**kw, "steps": 20})))
    got, _, where = pool_mod.get_pool(
        recs, shadows.pool, shadows.arch_spec, shadows.recipe, 6, 0, cache=cache, key=KEY
    )
    assert trained == [5]  # only the missing member
    again, _, where2 = pool_mod.get_pool(
        recs, shadows.pool, shadows.arch_spec, shadows.recipe, 6, 0, cache=cache, key=KEY
    )
    assert trained == [5] and where2 == where and again.recording == shadows.recording
    for a, b in zip(again.states, shadows.states):
        assert all(torch.equal(a[k], b[k]) for k in a)
    r = shadows.pool[shadows.membership[2]][:1]
    m_a = unlearn_member(again, 2, r, UnlearnSpec("amnesiac"), recs, key=KEY)
    m_b = unlearn_member(shadows, 2, r, UnlearnSpec("amnesiac"), recs, key=KEY)
    assert all(torch.equal(v, m_b.state_dict()[k]) for k, v in m_a.state_dict().items())
    # nothing cached names a record
    from pathlib import Path
    from urllib.parse import urlparse

    root = Path(urlparse(mlflow.get_run(where).info.artifact_uri).path).parents[2]
    blob = b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())
    assert blob and not any(recs.ids[int(p)].encode() in blob for p in shadows.pool[:50])
    # the cache refuses a member of another pool
    with pytest.raises(InputError, match="not saved for pool"):
        cache.save_member("0" * 64, members[0])


def test_a_forget_runs_params_give_its_unlearn_spec():
    logged = {"method": "relabel", "repair": "none", "repair_epochs": "1", "epochs": "", "copies": "4",
              "model_name": "m", "parent_version": "2"}
    assert UnlearnSpec.from_params(logged) == UnlearnSpec("relabel", "none", 1, None, 4)
    assert UnlearnSpec.from_params({"epochs": "3", "copies": "None"}, method="finetune") == UnlearnSpec("finetune", epochs=3)
    assert UnlearnSpec.from_params({}) == UnlearnSpec()
