"""The `audit` job: audit a registered version and log the figures on the run that produced it.

The audit itself is the library's (:func:`mlflow_amnesia.audit.audit_model`); this job resolves
the version, loads it, logs the metrics and the inversion grid on its run, and refreshes the
figures table of the version's description.
"""

from __future__ import annotations

import tempfile

from ..audit import audit_model
from ..mlflow import registry
from ..mlflow.flavor import load_model

__all__ = ["audit_version"]


def audit_version(
    model_name: str,
    *,
    version: int | None = None,
    alias: str | None = None,
    data_root: str | None = None,
    privacy: bool = True,
    settings=None,
    log: bool = True,
) -> dict[str, float]:
    """Audit a registered version and log the figures on the run that produced it (and its
    inversion grid as ``audit/inversion.png``); the version's description table is refreshed."""
    import mlflow

    mv = registry.resolve_version(model_name, version=version, alias=alias)
    am = load_model(registry.model_uri(mv))
    with tempfile.TemporaryDirectory() as tmp:
        metrics = audit_model(
            am,
            data_root=data_root,
            privacy=privacy,
            settings=settings,
            artifact_dir=tmp,
            what=f"{model_name} v{mv.version}",
        )
        if log and mv.run_id:
            c = mlflow.MlflowClient()
            now = mlflow.utils.time.get_current_time_millis()
            c.log_batch(mv.run_id, metrics=[mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()])
            if privacy:
                c.log_artifact(mv.run_id, f"{tmp}/inversion.png", "audit")
            parent = (
                registry.run_metrics(
                    registry.client().get_model_version(model_name, mv.tags[registry.TAG_PARENT]).run_id
                )
                if registry.TAG_PARENT in (mv.tags or {})
                else None
            )
            # every figure the run holds now, not only this audit's: an accuracy-only audit keeps
            # the privacy rows an earlier audit logged (the run's latest value of each metric)
            cols = {f"v{mv.version}": {**registry.run_metrics(mv.run_id), **metrics}}
            if parent is not None:
                cols[f"v{mv.tags[registry.TAG_PARENT]} (parent)"] = parent
            c.update_model_version(
                mv.name,
                mv.version,
                description=registry.replace_table(mv.description or "", registry.metrics_table(cols)),
            )
    return metrics
