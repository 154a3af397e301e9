"""Membership inference: shadow models, their cache, the two attacks and the audit's metrics."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from mlflow_amnesia.audit import membership as mem
from mlflow_amnesia.audit import shadow as shd
from mlflow_amnesia.audit.membership import METRIC_NAMES, AttackModels, lira_scores, membership_audit, score_records
from mlflow_amnesia.audit.shadow import ShadowSet, balanced_membership, default_pool, logit_confidence, shadow_cache_key, train_shadows
from mlflow_amnesia.learning.data import epoch_order, load_dataset, split
from mlflow_amnesia.errors import InputError
from mlflow_amnesia.learning.models import build_model, default_arch_spec
from mlflow_amnesia.learning.training import Recipe, epoch_orders, make_optimizer, run_epochs

RECIPE = Recipe(epochs=3, batch_size=64, lr=0.05)


@pytest.fixture(scope="module")
def one_thread():
    """Quiet, and one thread: tiny models run faster on one, much faster on a shared machine.

    Module-scoped fixtures run before conftest's per-test isolation, so set quiet here too.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_AMNESIA_QUIET", "1")
        yield
    torch.set_num_threads(n)


def _train(records, spec, positions, recipe, seed):
    model = build_model(spec, seed=seed)
    run_epochs(model, make_optimizer(model, recipe), records.x, records.y, epoch_orders(positions, seed, recipe.epochs),
               batch_size=recipe.batch_size)
    return model.eval()


@pytest.fixture(scope="module")
def digits(one_thread):
    """digits, its split, a target CNN, 4 shadows over the default pool and fitted attack models."""
    records = load_dataset("digits")
    sp = split(records, seed=0, holdout_fraction=0.2)
    spec = default_arch_spec("cnn", records)
    target = _train(records, spec, sp.train, RECIPE, seed=1)
    shadows = train_shadows(records, default_pool(sp), spec, RECIPE, n_shadows=4, seed=0, progress=False)
    attack = AttackModels.fit(shadows, records, steps=100)
    return records, sp, spec, target, shadows, attack


# ------------------------------------------------------------------ pure parts


def test_balanced_membership_puts_every_record_in_half_the_shadows():
    m = balanced_membership(6, 500, seed=3)
    assert m.shape == (6, 500) and m.dtype == bool
    assert (m.sum(0) == 3).all()
    assert 200 < m[0].sum() < 300  # each shadow trains on about half of the pool
    np.testing.assert_array_equal(m, balanced_membership(6, 500, seed=3))
    assert not np.array_equal(m, balanced_membership(6, 500, seed=4))
    assert (balanced_membership(5, 50, seed=0).sum(0) == 2).all()  # odd counts: floor(n / 2) IN
    with pytest.raises(InputError, match="at least 2 shadow"):
        balanced_membership(1, 10, seed=0)


def test_cache_key_covers_every_input_but_the_recipe_seed():
    spec = {"arch": "cnn", "in_channels": 1, "num_classes": 10, "image_size": 8}
    base = dict(fingerprint="sha256:ab", arch_spec=spec, recipe=Recipe(epochs=2), n_shadows=4, seed=0, pool_idx=np.arange(10))
    key = shadow_cache_key(**base)
    assert len(key) == 64 and int(key, 16) >= 0
    assert shadow_cache_key(**base) == key
    assert shadow_cache_key(**{**base, "recipe": Recipe(epochs=2).to_dict()}) == key
    assert shadow_cache_key(**{**base, "recipe": Recipe(epochs=2, seed=9)}) == key  # shadows draw their own seeds
    assert shadow_cache_key(**{**base, "pool_idx": np.arange(10)[::-1]}) == key  # a set of positions
    changed = [
        {"fingerprint": "sha256:cd"},
        {"arch_spec": {**spec, "num_classes": 9}},
        {"recipe": Recipe(epochs=3)},
        {"recipe": Recipe(epochs=2, lr=0.1)},
        {"n_shadows": 8},
        {"seed": 1},
        {"pool_idx": np.arange(11)},
    ]
    keys = {shadow_cache_key(**{**base, **c}) for c in changed}
    assert key not in keys and len(keys) == len(changed)


def test_logit_confidence_is_log_odds_of_the_true_class_and_stays_finite():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.0]])
    y = torch.tensor([0, 2, 1])
    p = torch.softmax(logits.double(), 1)[torch.arange(3), y]
    np.testing.assert_allclose(logit_confidence(logits, y), torch.log(p / (1 - p)).numpy(), rtol=1e-12)
    # p = 1 - 1e-40 would round to 1.0 (phi = inf) through a softmax; the stable form keeps order
    extreme = logit_confidence(torch.tensor([[100.0, 0.0], [120.0, 0.0]]), torch.tensor([0, 0]))
    assert np.isfinite(extreme).all() and extreme[1] > extreme[0] > 90


def test_lira_scores_on_known_gaussians():
    rng = np.random.default_rng(0)
    s, n = 64, 3
    in_mask = balanced_membership(s, n, seed=0)
    phi = np.where(in_mask, rng.normal(5.0, 1.0, (s, n)), rng.normal(0.0, 1.0, (s, n)))
    target = np.array([5.0, 0.0, 2.5])
    online = lira_scores(target, phi, in_mask, online=True, pooled_std=(1.0, 1.0))
    assert online[0] > 5 and online[1] < -5 and abs(online[2]) < 5  # log N(5;5,1) - log N(5;0,1) = 12.5; the midpoint ~0 (per-record variances from 32 draws)
    offline = lira_scores(target, phi, in_mask, online=False, pooled_std=(1.0, 1.0), per_record_variance=False)
    mu_out = np.array([phi[~in_mask[:, j], j].mean() for j in range(n)])
    np.testing.assert_allclose(offline, target - mu_out)  # pooled OUT std of 1: the z-score
    # 32 shadows per side: per-record variance is used by default and matches the explicit choice
    np.testing.assert_allclose(lira_scores(target, phi, in_mask, online=True, pooled_std=(9.0, 9.0)),
                               lira_scores(target, phi, in_mask, online=True, pooled_std=(9.0, 9.0), per_record_variance=True))
    with pytest.raises(InputError, match="no IN and OUT shadow"):
        lira_scores(target, phi, np.ones_like(in_mask), online=True, pooled_std=(1.0, 1.0))


def test_per_class_networks_are_independent_of_how_they_are_batched():
    torch.manual_seed(0)
    net = mem._PerClassMLP(3, 5)
    feats = torch.randn(7, 5)
    classes = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    batched = net(feats.expand(3, 7, 5))  # every class's network on every row
    np.testing.assert_allclose(net(feats, classes).detach(), batched[classes, torch.arange(7)].detach(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ shadows


def test_each_shadow_trains_on_exactly_its_half_of_the_pool(monkeypatch, one_thread):
    records = load_dataset("digits")
    pool = np.arange(0, 400, 2)
    seen = []
    real = shd.run_epochs

    def spy(model, optimizer, x, y, orders, **kw):
        seen.append(np.unique(orders))
        return real(model, optimizer, x, y, orders, **kw)

    monkeypatch.setattr(shd, "run_epochs", spy)
    sh = train_shadows(records, pool, default_arch_spec("cnn", records), Recipe(epochs=15, batch_size=20), n_shadows=3, seed=5, progress=False)
    assert len(seen) == 3
    for i in range(3):
        np.testing.assert_array_equal(seen[i], sh.pool[sh.membership[i]])
    # phi is each shadow's confidence on the pool: higher on its own training half
    assert all(sh.phi[i][sh.membership[i]].mean() > sh.phi[i][~sh.membership[i]].mean() for i in range(3))
    assert sh.info["accuracy_in"][0] >= sh.info["accuracy_out"][0]


def test_train_shadows_refuses_a_bad_pool():
    records = load_dataset("digits")
    spec = default_arch_spec("cnn", records)
    with pytest.raises(InputError, match="at least 4"):
        train_shadows(records, [1, 2], spec, RECIPE, progress=False)
    with pytest.raises(InputError, match="outside"):
        train_shadows(records, [1, 2, 3, len(records)], spec, RECIPE, progress=False)


def test_shadow_set_round_trips_and_detects_damage(digits, tmp_path):
    records, sp, spec, target, shadows, attack = digits
    d = shadows.save(tmp_path / "sh")
    assert sorted(p.name for p in d.iterdir()) == ["membership.npy", "phi.npy", "pool.npy", "shadow-000.pt",
                                                   "shadow-001.pt", "shadow-002.pt", "shadow-003.pt", "shadows.json"]
    meta = json.loads((d / "shadows.json").read_text())
    assert meta["cache_key"] == shadows.cache_key == shadow_cache_key(records.fingerprint, spec, RECIPE, 4, 0, default_pool(sp))
    back = ShadowSet.load(d)
    assert back.cache_key == shadows.cache_key
    for a, b in ((back.pool, shadows.pool), (back.membership, shadows.membership), (back.phi, shadows.phi)):
        np.testing.assert_array_equal(a, b)
    for sa, sb in zip(back.states, shadows.states):
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    blob = bytearray((d / "shadow-002.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (d / "shadow-002.pt").write_bytes(bytes(blob))
    with pytest.raises(InputError, match="shadow-002.pt.*damaged"):
        ShadowSet.load(d)
    meta.pop("files")
    (d / "shadows.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="lacks entries"):
        ShadowSet.load(d)
    (d / "shadows.json").unlink()
    with pytest.raises(InputError, match="no shadows.json"):
        ShadowSet.load(d)


def test_shadow_set_refuses_other_data(digits):
    records, sp, spec, target, shadows, attack = digits
    other = load_dataset("digits")
    object.__setattr__(other, "spec", {**other.spec, "fingerprint": "sha256:other"})
    with pytest.raises(InputError, match="trained on data"):
        membership_audit(target, other, shadows, attack, targets_idx=sp.train[:5], nonmembers_idx=sp.holdout[:5])


# ------------------------------------------------------------------ attack models and the audit


def test_attack_models_round_trip(digits, tmp_path):
    records, sp, spec, target, shadows, attack = digits
    attack.save(tmp_path / "sh")
    back = AttackModels.load(tmp_path / "sh")
    logits = shd.predict_logits(target, records.x[:50])
    np.testing.assert_array_equal(back.member_probability(logits, records.y[:50]), attack.member_probability(logits, records.y[:50]))
    assert back.info["shadow_key"] == shadows.cache_key
    (tmp_path / "sh" / "attack.pt").write_bytes(b"not a state dict")
    with pytest.raises(InputError, match="attack.pt.*damaged"):
        AttackModels.load(tmp_path / "sh")


def test_attack_models_learn_membership_on_the_shadows(digits):
    records, sp, spec, target, shadows, attack = digits
    acc = [a for a in attack.info["train_accuracy"] if a is not None]
    assert len(acc) == records.num_classes and np.mean(acc) > 0.5
    assert attack.info["untrained_classes"] == []


SUFFIXES = (".lo", ".hi", ".n_members", ".n_nonmembers")


def test_membership_audit_returns_the_contract_metrics(digits):
    records, sp, spec, target, shadows, attack = digits
    out = membership_audit(target, records, shadows, attack, targets_idx=sp.train[:200], nonmembers_idx=sp.holdout)
    estimated = [n for n in METRIC_NAMES if not n.endswith((".recall", ".precision"))]
    want = {"audit.n_targets", "audit.n_nonmembers", *METRIC_NAMES} | {n + x for n in estimated for x in SUFFIXES}
    assert set(out) == want
    assert all(isinstance(v, float) for v in out.values())
    for n in estimated:  # each AUC / TPR with its 95% interval and its sample
        assert 0.0 <= out[f"{n}.lo"] <= out[n] <= out[f"{n}.hi"] <= 1.0, n
        assert (out[f"{n}.n_members"], out[f"{n}.n_nonmembers"]) == (200.0, float(len(sp.holdout)))
    assert out["audit.lira.auc.hi"] - out["audit.lira.auc.lo"] > 0.01  # a real interval, not a point
    renamed = membership_audit(target, records, shadows, attack, targets_idx=sp.train[:200], nonmembers_idx=sp.holdout,
                               prefix="audit.retain")
    assert sorted(renamed.values()) == sorted(out.values())
    assert set(renamed) == {n.replace("audit.", "audit.retain.", 1) for n in out}


def test_below_min_per_class_no_auc_is_reported_only_per_record_statistics(digits):
    """Three targets: their "AUC" would be their percentile; none is returned, the per-record
    statistics are (LiRA log likelihood ratio, p-value against the OUT shadows)."""
    from mlflow_amnesia.audit.metrics import MIN_PER_CLASS

    records, sp, spec, target, shadows, attack = digits
    few = sp.train[: MIN_PER_CLASS - 1]
    out = membership_audit(target, records, shadows, attack, targets_idx=few, nonmembers_idx=sp.holdout)
    assert out == {"audit.n_targets": float(len(few)), "audit.n_nonmembers": float(len(sp.holdout))}
    enough = membership_audit(target, records, shadows, attack, targets_idx=sp.train[:MIN_PER_CLASS],
                              nonmembers_idx=sp.holdout)
    assert "audit.lira.auc" in enough and "audit.lira.auc.lo" in enough
    s = score_records(target, records, shadows, attack, few)
    rows = mem.per_record(s)
    assert len(rows) == len(few) and s.lira_variant == "online"
    for i, r in enumerate(rows):
        assert r["lira_log_lr"] == pytest.approx(s.lira[i]) and 0.0 <= r["p_out"] <= 1.0
    # p_out is the OUT Gaussian's upper tail at the record's offline z-score
    z = lira_scores(s.phi, shadows.shadow_phi(records, few), shadows.in_mask(few), online=False,
                    pooled_std=shadows.pooled_std())
    from math import erfc, sqrt
    np.testing.assert_allclose([r["p_out"] for r in rows], [0.5 * erfc(v / sqrt(2)) for v in z])


def test_membership_audit_refuses_bad_target_sets(digits):
    records, sp, spec, target, shadows, attack = digits
    with pytest.raises(InputError, match="both targets and non-members"):
        membership_audit(target, records, shadows, attack, targets_idx=sp.holdout[:3], nonmembers_idx=sp.holdout)
    with pytest.raises(InputError, match="got 0 and"):
        membership_audit(target, records, shadows, attack, targets_idx=[], nonmembers_idx=sp.holdout)


def test_attack_fitted_on_other_shadows_is_refused(digits):
    records, sp, spec, target, shadows, attack = digits
    other = ShadowSet(shadows.fingerprint, shadows.arch_spec, shadows.recipe, shadows.seed + 1, shadows.pool,
                      shadows.membership, shadows.phi, shadows.states)
    with pytest.raises(InputError, match="different shadow set"):
        membership_audit(target, records, other, attack, targets_idx=sp.train[:5], nonmembers_idx=sp.holdout[:5])


def test_records_outside_the_pool_are_scored_offline(digits, one_thread):
    records, sp, spec, target, shadows, attack = digits
    pool = sp.holdout  # the classic threat model: the attacker never holds the training data
    sh = train_shadows(records, pool, spec, Recipe(epochs=1, batch_size=64), n_shadows=2, seed=0, progress=False)
    att = AttackModels.fit(sh, records, steps=20)
    s = score_records(target, records, sh, att, np.r_[sp.train[:30], sp.holdout[:30]])
    assert s.lira_variant == "offline" and np.isfinite(s.lira).all()
    # the shadows' confidence on non-pool records is computed, and agrees with running them directly
    phi = sh.shadow_phi(records, sp.train[:30])
    direct = logit_confidence(shd.predict_logits(sh.modules()[1], records.x[sp.train[:30]]), records.y[sp.train[:30]])
    np.testing.assert_allclose(phi[1], direct, rtol=1e-6)
    with pytest.raises(InputError, match="no IN and OUT"):
        score_records(target, records, sh, att, sp.train[:5], lira="online")


def test_auditing_with_cached_shadows_only_runs_inference(digits, tmp_path, monkeypatch):
    records, sp, spec, target, shadows, attack = digits
    shadows.save(tmp_path / "c")
    attack.save(tmp_path / "c")
    expected = membership_audit(target, records, shadows, attack, targets_idx=sp.train[:100], nonmembers_idx=sp.holdout)

    def no_training(*a, **k):
        raise AssertionError("an audit with cached shadows must not train")

    monkeypatch.setattr(shd, "run_epochs", no_training)
    monkeypatch.setattr(torch.optim.Optimizer, "step", no_training)
    sh, att = ShadowSet.load(tmp_path / "c"), AttackModels.load(tmp_path / "c")
    got = membership_audit(target, records, sh, att, targets_idx=sp.train[:100], nonmembers_idx=sp.holdout)
    assert got == expected


# ------------------------------------------------------------------ real data


@pytest.mark.slow
def test_attacks_detect_members_of_an_overfit_mnist_model_and_not_removed_records(mnist_dir, one_thread, tmp_path):
    """Real MNIST, a CNN overfit on 250 records. Measured (torch 2.14 CPU): LiRA AUC 0.69 and the
    paper's attack 0.64 on members vs held-out; a model retrained without 100 of the members
    scores 0.5 +- 0.05 on them. Asserted: LiRA > 0.6 and the paper's attack > 0.55 on members,
    and within 0.1 of 0.5 after the retrain (about 3 standard errors for 100 vs 250 records)."""
    records = load_dataset(f"idx:{mnist_dir}")
    perm = epoch_order(len(records), 123, 0)
    members, holdout = np.sort(perm[:250]), np.sort(perm[250:500])
    forget = np.sort(members[epoch_order(len(members), 7, 0)[:100]])
    spec = default_arch_spec("cnn", records)
    recipe = Recipe(epochs=20, batch_size=32, lr=0.05)
    target = _train(records, spec, members, recipe, seed=1)
    retrained = _train(records, spec, np.setdiff1d(members, forget), recipe, seed=2)

    t0 = time.monotonic()
    shadows = train_shadows(records, np.union1d(members, holdout), spec, recipe, n_shadows=8, seed=0, progress=False)
    attack = AttackModels.fit(shadows, records)
    build_seconds = time.monotonic() - t0
    shadows.save(tmp_path / "ref")
    attack.save(tmp_path / "ref")

    t0 = time.monotonic()
    shadows, attack = ShadowSet.load(tmp_path / "ref"), AttackModels.load(tmp_path / "ref")
    before = membership_audit(target, records, shadows, attack, targets_idx=members, nonmembers_idx=holdout)
    audit_seconds = time.monotonic() - t0
    after = membership_audit(retrained, records, shadows, attack, targets_idx=forget, nonmembers_idx=holdout)
    print(f"\nmembers vs held-out: {before}\nforgotten (retrained) vs held-out: {after}\n"
          f"audit (load + score) {audit_seconds:.2f}s / shadows + attack {build_seconds:.1f}s = {audit_seconds / build_seconds:.4f}")

    assert before["audit.lira.auc"] > 0.6
    assert before["audit.mia.auc"] > 0.55
    assert abs(after["audit.lira.auc"] - 0.5) < 0.1
    assert abs(after["audit.mia.auc"] - 0.5) < 0.1
    assert before["audit.lira.tpr_at_1pct_fpr"] > after["audit.lira.tpr_at_1pct_fpr"]
    assert audit_seconds < 0.1 * build_seconds


def test_a_cached_shadow_set_of_another_architecture_is_never_built(digits, tmp_path):
    """A run in the shadow cache tagged with this audit's key but holding shadows of another
    architecture (a builder that would run code) is refused before any shadow is built."""
    import mlflow

    from mlflow_amnesia.audit.privacy import SHADOW_EXPERIMENT, SHADOW_TAG, audit_pool, get_shadows

    records, sp, spec, target, shadows, attack = digits
    marker = tmp_path / "MARKER"
    hostile = {"arch": "builder", "builder": "os:system", "kwargs": {"command": f"touch {marker}"}}
    forged = ShadowSet(shadows.fingerprint, hostile, shadows.recipe, shadows.seed, shadows.pool, shadows.membership,
                       shadows.phi, shadows.states, shadows.info)
    d = forged.save(tmp_path / "shadows")
    attack.save(d)
    key = shadow_cache_key(records.fingerprint, spec, RECIPE.to_dict(), 4, 0, audit_pool(sp, 0))
    c = mlflow.MlflowClient()
    run = c.create_run(c.create_experiment(SHADOW_EXPERIMENT), tags={SHADOW_TAG: key})
    c.log_artifacts(run.info.run_id, str(d), artifact_path="shadows")
    c.set_terminated(run.info.run_id, "FINISHED")
    with pytest.raises(InputError, match=f"run {run.info.run_id}.*cache key"):
        got, _, _ = get_shadows(records, sp, spec, RECIPE.to_dict(), 4, 0)
        got.modules()  # what the audit does next with the shadows
    assert not marker.exists()
