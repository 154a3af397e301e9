"""Model versions: resolving them, lineage tags, descriptions, aliases.

Tag names are a contract (other features and users' dashboards read them):
``amnesia.parent_version``, ``amnesia.method``, ``amnesia.n_records``,
``amnesia.steps_rolled_back``, ``amnesia.forget_request``, ``amnesia.superseded_by``.
"""

from __future__ import annotations

import math
from typing import Optional

from .errors import InputError

TAG_PARENT = "amnesia.parent_version"
TAG_METHOD = "amnesia.method"
TAG_N_RECORDS = "amnesia.n_records"
TAG_STEPS = "amnesia.steps_rolled_back"
TAG_REQUEST = "amnesia.forget_request"
TAG_SUPERSEDED = "amnesia.superseded_by"
TAG_REPAIR = "amnesia.repair"
TAG_FORMAT = "amnesia.flavor"

HEADLINE_METRICS = (
    "acc.test", "acc.retain", "acc.forget", "loss.forget",
    "audit.mia.auc", "audit.mia.recall", "audit.mia.tpr_at_1pct_fpr", "audit.lira.auc", "audit.lira.tpr_at_1pct_fpr",
    "audit.retain.lira.auc", "audit.inversion.score",
)


def client():
    import mlflow

    return mlflow.MlflowClient()


def resolve_version(name: str, *, version: Optional[int] = None, alias: Optional[str] = None):
    """The ModelVersion asked for (latest when neither version nor alias is given)."""
    from mlflow.exceptions import MlflowException

    if version is not None and alias is not None:
        raise InputError("give --version or --alias, not both")
    c = client()
    try:
        c.get_registered_model(name)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")) or "not found" in str(e).lower():
            names = sorted(m.name for m in c.search_registered_models(max_results=50))
            raise InputError(
                f"no registered model named {name!r} in {_where()}. "
                + (f"Registered models: {', '.join(names)}." if names else "No model is registered yet: run `mlflow-amnesia train` first.")
            ) from None
        raise
    try:
        if alias is not None:
            return c.get_model_version_by_alias(name, alias)
        if version is not None:
            return c.get_model_version(name, str(version))
    except MlflowException:
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        versions = sorted(int(v.version) for v in c.search_model_versions(f"name='{name}'"))
        raise InputError(f"model {name!r} has no {what}; its versions are {versions}.") from None
    versions = c.search_model_versions(f"name='{name}'")
    if not versions:
        raise InputError(f"model {name!r} has no versions yet.")
    return max(versions, key=lambda v: int(v.version))


def _where() -> str:
    import mlflow

    return f"the registry at {mlflow.get_registry_uri()}"


def model_uri(mv) -> str:
    return f"models:/{mv.name}/{mv.version}"


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def metrics_table(rows: dict[str, dict[str, float]], names=HEADLINE_METRICS) -> str:
    """A markdown table: one column per entry of ``rows`` (e.g. 'this version', 'parent')."""
    cols = list(rows)
    out = ["| metric | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for n in names:
        if any(n in rows[c] for c in cols):
            out.append(f"| {n} | " + " | ".join(_fmt(rows[c].get(n)) for c in cols) + " |")
    return "\n".join(out)


def run_metrics(run_id: Optional[str]) -> dict[str, float]:
    if not run_id:
        return {}
    try:
        return dict(client().get_run(run_id).data.metrics)
    except Exception:  # noqa: BLE001 - a deleted parent run only empties a table column
        return {}


def annotate_version(mv, *, tags: dict[str, str], description: str, aliases: tuple[str, ...] = ()) -> None:
    c = client()
    for k, v in tags.items():
        c.set_model_version_tag(mv.name, mv.version, k, str(v))
    c.update_model_version(mv.name, mv.version, description=description)
    for a in aliases:
        c.set_registered_model_alias(mv.name, a, mv.version)


def replace_table(description: str, table: str) -> str:
    """``description`` with its metrics table (from the first ``| metric |`` line) replaced."""
    head = description.split("| metric |", 1)[0].rstrip()
    return f"{head}\n\n{table}" if head else table
