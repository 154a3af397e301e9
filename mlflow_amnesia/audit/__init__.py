"""Audit of a model version: what it still does well, and what it still gives away.

Accuracy (``acc.test``, ``acc.retain``, ``acc.forget``, ``loss.*``, here) and privacy
(``audit.mia.*``, ``audit.lira.*``, ``audit.inversion.score``: :mod:`.privacy`), logged on the
run that produced the version. Metric names are a contract: dashboards and later features
read them. For a forget the parent is measured in the same audit on the same records
(:func:`parent_metric` names its figures), and :mod:`.verdict` turns the figures into the
version's ``pass`` / ``fail`` / ``inconclusive`` (or ``n/a`` for a trained version).
"""

from __future__ import annotations

import numpy as np

from ..learning.data import forgotten_positions  # noqa: F401 - re-exported: its historical home
from ..learning.training import evaluate
from . import privacy as _settings
from .privacy import PER_RECORD_ARTIFACT as PER_RECORD_ARTIFACT
from .verdict import parent_metric


def retain_sample(retain: np.ndarray, limit: int | None = None) -> np.ndarray:
    """The retained records ``acc.retain`` is measured on: all of them up to ``limit`` (default
    :data:`~mlflow_amnesia.audit.privacy.RETAIN_SAMPLE`), else a sample of ``limit`` drawn with a
    fixed seed (sorted), so the same set gives the same sample."""
    limit = _settings.RETAIN_SAMPLE if limit is None else int(limit)
    retain = np.asarray(retain, np.int64)
    if len(retain) <= limit:
        return retain
    return np.sort(np.random.default_rng(0).choice(retain, size=limit, replace=False))


def accuracy_metrics(
    module, records, train_idx, holdout_idx, forget_idx, *, only: tuple[str, ...] = ("test", "retain", "forget")
) -> dict[str, float]:
    """acc/loss on held-out (test), retained training records, and forgotten records (those of
    ``only``)."""
    retain = np.setdiff1d(np.asarray(train_idx, np.int64), np.asarray(forget_idx, np.int64))
    out: dict[str, float] = {}
    for name, idx in (("test", holdout_idx), ("retain", retain), ("forget", forget_idx)):
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) and name in only:
            acc, loss = evaluate(module, records.x[idx], records.y[idx])
            out[f"acc.{name}"] = acc
            out[f"loss.{name}"] = loss
    return out


def full_audit(
    module,
    records,
    split,
    forget_idx,
    forgotten_all_idx,
    *,
    arch_spec: dict,
    recipe: dict,
    privacy: bool = True,
    settings=None,
    artifact_dir: str | None = None,
    parent_module=None,
    key: bytes | None = None,
    ulira=None,
    exclusion=None,
    retained: bool = True,
) -> dict[str, float]:
    """Accuracy figures, plus (``privacy``) membership inference and inversion; with
    ``artifact_dir`` the inversion grid is written there as ``inversion.png`` and, for a forget,
    the per-record statistics as ``per_record.json`` (records named by their keyed hash under
    ``key``). With ``parent_module`` (a forget's parent) the parent is measured on the same
    records too (:func:`parent_metric` names its figures); ``ulira`` (a
    :class:`~mlflow_amnesia.audit.ulira.UliraRequest`): U-LiRA and the dual view too.
    ``exclusion`` (a :class:`~mlflow_amnesia.audit.privacy.PoolExclusion`): records the shadow pool
    leaves out (those under deletion requests). ``retained=False`` (a forget without the privacy
    audit) skips the retained records, the longest pass: ``acc.retain`` is then the next audit's
    (:meth:`~mlflow_amnesia.audit.privacy.AuditSettings.fingerprint` tells the two apart)."""
    retain = np.setdiff1d(np.asarray(split.train, np.int64), np.asarray(forgotten_all_idx, np.int64))
    sample = retain_sample(np.setdiff1d(retain, np.asarray(forget_idx, np.int64)))
    own_parts = ("test", "retain", "forget") if retained or privacy else ("test", "forget")
    metrics = accuracy_metrics(module, records, sample, split.holdout, forget_idx, only=own_parts)
    if "retain" in own_parts:
        metrics["acc.retain.n"] = float(len(sample))
    if parent_module is not None:
        # The parent on the same records. Without the privacy audit (forget --no-audit) only on the
        # forgotten ones: its held-out figure is in its own run (registry.matched_parent takes it
        # from there), and its retained-records pass, the longest, is the audit's comparison.
        parent_module.eval()
        only = ("test", "retain", "forget") if privacy else ("forget",)
        own = accuracy_metrics(parent_module, records, sample, split.holdout, forget_idx, only=only)
        metrics.update({parent_metric(k): v for k, v in own.items()})
    if privacy:
        from .privacy import privacy_audit

        png = f"{artifact_dir}/inversion.png" if artifact_dir else None
        forget_idx = np.asarray(forget_idx, np.int64)
        hashes = None
        if key is not None and len(forget_idx):
            from ..keys import hash_ids

            hashes = [h.tobytes().hex() for h in hash_ids([records.ids[i] for i in forget_idx], key)]
        metrics.update(
            privacy_audit(
                module,
                records,
                split,
                forget_idx,
                forgotten_all_idx,
                arch_spec=arch_spec,
                recipe=recipe,
                settings=settings,
                png_path=png,
                parent_module=parent_module,
                record_hashes=hashes,
                per_record_path=f"{artifact_dir}/{PER_RECORD_ARTIFACT}" if artifact_dir and len(forget_idx) else None,
                ulira=ulira,
                exclusion=exclusion,
            )
        )
    return metrics


def audit_model(
    am,
    *,
    data_root: str | None = None,
    privacy: bool = True,
    settings=None,
    artifact_dir: str | None = None,
    what: str | None = None,
    parent=None,
    exclusion=None,
    ulira=None,
) -> dict[str, float]:
    """The full audit of a loaded version (:class:`~mlflow_amnesia.mlflow.flavor.AmnesiaModel`): its
    own request's forgotten records are the membership targets (see :mod:`.privacy`); with
    ``parent`` (its parent, loaded) they are scored under the parent too (the matched comparison).

    The record key is checked against the version's key id first (``what`` names the version in
    the error): with another key no forgotten record would be found and every figure would be
    computed on the wrong records. ``exclusion``: a function of (records, split, key) giving the
    :class:`~mlflow_amnesia.audit.privacy.PoolExclusion` of the shadow pool (the MLflow layer's
    reads the erasure ledger). ``ulira`` (a :class:`~mlflow_amnesia.audit.ulira.UliraRequest`):
    U-LiRA and the dual view of a forget's records too."""
    from ..keys import load_key_for
    from ..learning.data import Split, rebuild

    key = load_key_for(am.info.key_id, what or f"the model {am.info.model_name or ''}".rstrip(), to="audit it")
    records = rebuild(am.info.dataset or {}, root=data_root)
    sp = Split.from_json(am.info.split or {}, records)
    all_forgotten = forgotten_positions(records, sp.train, am.forgotten, key)
    last = am.info.last_request
    n = int(last.get("n_records", 0)) if last.get("method", "train") != "train" else 0
    # forgotten hashes are appended request by request: this version's request is the last n
    this_request = (
        forgotten_positions(records, sp.train, am.forgotten[len(am.forgotten) - n :], key)
        if n
        else np.zeros(0, np.int64)
    )
    return full_audit(
        am.module,
        records,
        sp,
        this_request,
        all_forgotten,
        arch_spec=am.arch,
        recipe=am.info.recipe or {},
        privacy=privacy,
        settings=settings,
        artifact_dir=artifact_dir,
        parent_module=parent.module if parent is not None and n else None,
        key=key,
        exclusion=exclusion(records, sp, key) if exclusion is not None and privacy else None,
        ulira=ulira if n else None,
    )
