"""The privacy audit of one model version, as `train`, `forget` and `audit` run it.

Membership inference (the paper's attack and LiRA, :mod:`.membership`) and model inversion
(:mod:`.inversion`), sharing one set of shadow models that is trained once per (data, arch,
recipe, count, seed) and cached as the artifacts of an MLflow run in the experiment
``mlflow-amnesia-shadows`` (tag ``amnesia.shadow_key``); later audits download it and only run
inference.

What is attacked:
- after a forget: the records this version forgot (``audit.mia.*``, ``audit.lira.*``: they
  should look like held-out non-members, AUC near 0.5), plus a sample of retained training
  records as a control (``audit.retain.mia.*`` ...: these should still look like members);
- a version that forgot nothing (version 1): a sample of its training records.
Non-members are always held-out records (those in the shadows' pool, :func:`audit_pool`). Inversion targets the classes of the forgotten
records (up to 3), or the first 10 classes of a version that forgot nothing.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from ..progress import info as say
from ..registry import filter_literal
from ..tags import TAG_SHADOW_KEY

SHADOW_EXPERIMENT = "mlflow-amnesia-shadows"
SHADOW_TAG = TAG_SHADOW_KEY


@dataclass
class AuditSettings:
    shadows: Optional[int] = None  # None: 4 for the embedded digits set, 16 (the paper's) otherwise
    shadow_seed: int = 0
    retain_sample: int = 200
    inversion_iterations: int = 1000
    process_every: int = 500
    inversion_classes: int = 3  # at most this many classes of forgotten records

    def n_shadows(self, dataset_spec: dict) -> int:
        if self.shadows is not None:
            return int(self.shadows)
        return 4 if str(dataset_spec.get("spec", "")) == "digits" else 16


def audit_pool(split, seed: int) -> np.ndarray:
    """The records the shadows draw on: every training record plus as many held-out ones (all of
    them when there are fewer), so each shadow trains on about as many records as the target and
    every audited record has shadows that trained on it and shadows that did not (online LiRA)."""
    train = np.asarray(split.train, np.int64)
    hold = np.asarray(split.holdout, np.int64)
    if len(hold) > len(train):
        hold = np.sort(np.random.default_rng(seed).choice(hold, size=len(train), replace=False))
    return np.union1d(train, hold)


def get_shadows(records, split, arch_spec: dict, recipe: dict, n: int, seed: int):
    """(ShadowSet, AttackModels, run id of the cache): from the cache, else trained and cached."""
    import mlflow

    from .membership import AttackModels
    from .shadow import ShadowSet, shadow_cache_key, train_shadows

    pool = audit_pool(split, seed)
    key = shadow_cache_key(records.fingerprint, arch_spec, recipe, n, seed, pool)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(SHADOW_EXPERIMENT)
    if exp is not None:
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{SHADOW_TAG}` = {filter_literal(key)} and attributes.status = 'FINISHED'",
                                  max_results=1)
        if runs:
            run_id = runs[0].info.run_id
            with tempfile.TemporaryDirectory() as tmp:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="shadows", dst_path=tmp)
                shadows = ShadowSet.load(local)
                if shadows.cache_key != key:  # other data, recipe or architecture: never build its models
                    raise InputError(
                        f"the cached shadow models of run {run_id} (experiment {SHADOW_EXPERIMENT}) are tagged with "
                        f"cache key {key} but hold a set with key {shadows.cache_key}: the cache is damaged or forged; "
                        "delete that run and audit again (the shadows are then trained afresh)."
                    )
                attack = AttackModels.load(local)
            say(f"audit: reusing {n} cached shadow models (run {run_id})")
            return shadows, attack, run_id
    say(f"audit: training {n} shadow models (cached for later audits)")
    shadows = train_shadows(records, pool, arch_spec, recipe, n_shadows=n, seed=seed)
    attack = AttackModels.fit(shadows, records, seed=seed)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(SHADOW_EXPERIMENT)
    run = client.create_run(exp_id, run_name=f"shadows-{key[:12]}", tags={SHADOW_TAG: key})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / "shadows"
            shadows.save(d)
            attack.save(d)
            client.log_artifacts(run.info.run_id, str(d), artifact_path="shadows")
        client.log_param(run.info.run_id, "n_shadows", n)
        client.set_terminated(run.info.run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    return shadows, attack, run.info.run_id


def privacy_audit(module, records, split, forget_idx: np.ndarray, forgotten_all_idx: np.ndarray, *,
                  arch_spec: dict, recipe: dict, settings: Optional[AuditSettings] = None,
                  png_path: Optional[str] = None) -> dict[str, float]:
    """Membership-inference and inversion figures of ``module`` (see the module docstring)."""
    from .inversion import inversion_audit
    from .membership import membership_audit

    s = settings or AuditSettings()
    n = s.n_shadows(records.spec)
    shadows, attack, _ = get_shadows(records, split, arch_spec, recipe, n, s.shadow_seed)
    holdout = np.intersect1d(np.asarray(split.holdout, np.int64), audit_pool(split, s.shadow_seed))
    retained = np.setdiff1d(np.asarray(split.train, np.int64), np.asarray(forgotten_all_idx, np.int64))
    rng = np.random.default_rng(s.shadow_seed)
    sample = np.sort(rng.choice(retained, size=min(s.retain_sample, len(retained)), replace=False))
    forget_idx = np.asarray(forget_idx, np.int64)
    module.eval()
    if len(forget_idx):
        metrics = membership_audit(module, records, shadows, attack, targets_idx=forget_idx, nonmembers_idx=holdout)
        metrics.update(membership_audit(module, records, shadows, attack, targets_idx=sample, nonmembers_idx=holdout,
                                        prefix="audit.retain"))
        ys = records.y.numpy()[forget_idx]
        vals, counts = np.unique(ys, return_counts=True)
        classes = [int(c) for c in vals[np.argsort(-counts, kind="stable")][: s.inversion_classes]]
    else:
        metrics = membership_audit(module, records, shadows, attack, targets_idx=sample, nonmembers_idx=holdout)
        classes = list(range(min(10, records.num_classes)))
    say(f"audit: inverting class(es) {classes}")
    inv = inversion_audit(module, records, classes, judges=shadows.modules(), reference_idx=holdout,
                          iterations=s.inversion_iterations, process_every=s.process_every, seed=s.shadow_seed)
    metrics.update(inv.metrics("audit"))
    if png_path:
        inv.save_png(png_path, records)
    return metrics
