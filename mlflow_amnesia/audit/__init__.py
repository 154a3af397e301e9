"""Audit of a model version: what it still does well, and what it still gives away.

This module computes the accuracy side of the audit (``acc.test``, ``acc.retain``,
``acc.forget``, ``loss.*``) and logs it on the run that produced the version. Metric names
are a contract: dashboards and later features read them.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..training import evaluate


def forgotten_positions(records, train_idx: np.ndarray, forgotten: np.ndarray, key: bytes) -> np.ndarray:
    """Positions (into ``records``) of training records whose keyed hash is in ``forgotten``."""
    from ..keys import hash_ids

    if len(forgotten) == 0:
        return np.zeros(0, np.int64)
    train_idx = np.asarray(train_idx, dtype=np.int64)
    h = hash_ids([records.ids[i] for i in train_idx], key)
    hv = np.ascontiguousarray(h).view("V16").ravel()
    fv = np.ascontiguousarray(forgotten, dtype=np.uint8).view("V16").ravel()
    return train_idx[np.isin(hv, fv)]


def accuracy_metrics(module, records, train_idx, holdout_idx, forget_idx) -> dict[str, float]:
    """acc/loss on held-out (test), retained training records, and forgotten records."""
    retain = np.setdiff1d(np.asarray(train_idx, np.int64), np.asarray(forget_idx, np.int64))
    out: dict[str, float] = {}
    for name, idx in (("test", holdout_idx), ("retain", retain), ("forget", forget_idx)):
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx):
            acc, loss = evaluate(module, records.x[idx], records.y[idx])
            out[f"acc.{name}"] = acc
            out[f"loss.{name}"] = loss
    return out


def audit_version(model_name: str, *, version: Optional[int] = None, alias: Optional[str] = None,
                  data_root: Optional[str] = None, log: bool = True) -> dict[str, float]:
    """Compute the audit of a registered version and log it on the run that produced it."""
    import mlflow

    from .. import registry
    from ..data import rebuild
    from ..flavor import load_model
    from ..keys import load_key
    from ..data import Split

    mv = registry.resolve_version(model_name, version=version, alias=alias)
    am = load_model(registry.model_uri(mv))
    records = rebuild(am.info["dataset"], root=data_root)
    sp = Split.from_json(am.info["split"], records)
    key = load_key(create=False)
    fidx = forgotten_positions(records, sp.train, am.forgotten, key)
    metrics = accuracy_metrics(am.module, records, sp.train, sp.holdout, fidx)
    if log and mv.run_id:
        mlflow.MlflowClient().log_batch(
            mv.run_id, metrics=[mlflow.entities.Metric(k, float(v), mlflow.utils.time.get_current_time_millis(), 0) for k, v in metrics.items()]
        )
    return metrics
