"""How a version's logged model is told apart, and the data its figures were measured on.

Every version is logged as an MLflow 3 logged model named ``<model>-v<N>`` (``digits-cnn-v2``),
with a description (the tag ``mlflow.note.content``, which the UI shows) and ``amnesia.*`` tags,
so the run's and the experiment's model lists say which is which. Its figures are logged linked
to it and to the MLflow *dataset* they were measured on (:func:`log_linked_metrics`), so the UI
shows each metric's data:

* ``<data>:holdout`` (``acc.test``), ``<data>:retain`` (``acc.retain``, ``audit.retain.*``):
  named by the data spec, their digest the split's checksum;
* ``forgotten`` (``acc.forget``, ``audit.mia.*``, ``audit.lira.*``, ``audit.inversion.*``): the
  request's records, identified by a digest of the request's keyed hash only, never by ids.

Only metadata is logged (:class:`mlflow.data.meta_dataset.MetaDataset`): no record leaves the
machine through a dataset.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["evaluation_datasets", "log_linked_metrics", "logged_model_name", "next_version"]

_BAD = re.compile(r"[/:.%\"'\s]+")  # what MLflow refuses in a logged model's name (and spaces)


def next_version(name: str) -> int:
    """The version number the registry will give ``name``'s next version (1 for a new model)."""
    from . import registry

    try:
        versions = registry.search_versions(name)
    except Exception:  # noqa: BLE001 - only for a name; registration decides the real number
        return 1
    return max([int(v.version) for v in versions] + [0]) + 1


def logged_model_name(name: str, version: int) -> str:
    """``<model>-v<N>``, with the characters MLflow refuses in a logged model's name replaced by ``-``."""
    return f"{_BAD.sub('-', name).strip('-') or 'model'}-v{int(version)}"


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:16]


def evaluation_datasets(info: Any, request_hash: str | None = None) -> dict[str, Any]:
    """``{"holdout", "retain", "forgotten"?}``: the datasets a version's figures were measured on,
    as MLflow metadata datasets (name, digest, source tags; no data)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    spec = str((info.dataset or {}).get("spec") or "data")
    split = info.split or {}
    checksum = str(split.get("checksum") or split.get("fingerprint") or "")
    out = {}
    for part in ("holdout", "retain"):
        source = CodeDatasetSource({"mlflow_amnesia.data": spec, "mlflow_amnesia.split": part})
        out[part] = MetaDataset(source, name=f"{spec}:{part}", digest=_digest(spec, part, checksum))  # type: ignore[abstract]
    if request_hash:
        source = CodeDatasetSource({"mlflow_amnesia.data": spec, "mlflow_amnesia.split": "forgotten"})
        out["forgotten"] = MetaDataset(source, name="forgotten", digest=_digest("forgotten", request_hash))  # type: ignore[abstract]
    return out


def _dataset_of(metric: str, have: Mapping[str, Any]) -> str | None:
    if metric == "acc.test":
        return "holdout"
    if metric == "acc.retain" or metric.startswith("audit.retain."):
        return "retain"
    if metric == "acc.forget" or metric.startswith(("audit.mia.", "audit.lira.", "audit.inversion.")):
        return "forgotten" if "forgotten" in have else None
    return None


def log_linked_metrics(metrics: Mapping[str, float], model_id: str | None, datasets: Mapping[str, Any]) -> None:
    """Log ``metrics`` on the active run, linked to the logged model ``model_id`` and each to the
    dataset it was measured on (the others to the model only); the datasets as run inputs."""
    import mlflow

    groups: dict[str | None, dict[str, float]] = {}
    for k, v in metrics.items():
        groups.setdefault(_dataset_of(k, datasets), {})[k] = float(v)
    for part, values in groups.items():
        ds = datasets.get(part) if part else None
        if ds is not None:
            mlflow.log_input(ds, context="evaluation")
        mlflow.log_metrics(values, model_id=model_id, dataset=ds)
