"""The `audit` job: audit a registered version and log the figures on the run that produced it.

The audit itself is the library's (:func:`mlflow_amnesia.audit.audit_model`); this job resolves
the version (and a forget's parent, for the matched comparison), loads it, logs the metrics,
the inversion grid and the per-record statistics on its run, and refreshes the version's
verdict (tags ``amnesia.audit.verdict`` / ``amnesia.audit.verdict_reason``, the description's
first line) and its figures table.
"""

from __future__ import annotations

import os
import tempfile

from ..audit import PER_RECORD_ARTIFACT, audit_model
from ..mlflow import registry
from ..mlflow.flavor import load_model
from ..progress import info as say
from ..tags import TAG_PURGE_STARTED

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
    inversion grid as ``audit/inversion.png``, a forget's per-record statistics as
    ``audit/per_record.json``); the version's verdict tags and description are refreshed.

    A forget's child is audited beside its parent on the same records (the parent is loaded
    for that); a purged parent cannot be, and the parent's figures the forget's own audit logged
    stay the ones the verdict uses."""
    import mlflow

    from ..tags import TAG_PURGED

    mv = registry.resolve_version(model_name, version=version, alias=alias)
    am = load_model(registry.model_uri(mv))
    parent_no = (mv.tags or {}).get(registry.TAG_PARENT)
    pmv = registry.client().get_model_version(model_name, parent_no) if parent_no is not None else None
    parent = None
    if pmv is not None and TAG_PURGED not in (pmv.tags or {}) and not (pmv.tags or {}).get(TAG_PURGE_STARTED):
        parent = load_model(registry.model_uri(pmv))
    elif pmv is not None:
        say(f"audit: v{parent_no} is purged: its figures from the forget's own audit stay the parent's")
    with tempfile.TemporaryDirectory() as tmp:
        metrics = audit_model(
            am,
            data_root=data_root,
            privacy=privacy,
            settings=settings,
            artifact_dir=tmp,
            what=f"{model_name} v{mv.version}",
            parent=parent,
        )
        if log and mv.run_id:
            c = mlflow.MlflowClient()
            now = mlflow.utils.time.get_current_time_millis()
            c.log_batch(mv.run_id, metrics=[mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()])
            if privacy:
                c.log_artifact(mv.run_id, f"{tmp}/inversion.png", "audit")
                if os.path.exists(f"{tmp}/{PER_RECORD_ARTIFACT}"):
                    c.log_artifact(mv.run_id, f"{tmp}/{PER_RECORD_ARTIFACT}", "audit")
            # every figure the run holds now, not only this audit's: an accuracy-only audit keeps
            # the privacy rows an earlier audit logged (the run's latest value of each metric)
            held = {**registry.run_metrics(mv.run_id), **metrics}
            verdict = registry.version_verdict(mv, held)
            for k, v in registry.verdict_tags(verdict).items():
                c.set_model_version_tag(mv.name, mv.version, k, v)
            if pmv is not None:
                table = registry.forget_table(mv.version, parent_no, held, registry.run_metrics(pmv.run_id))
            else:
                table = registry.metrics_table({f"v{mv.version}": held})
            desc = registry.replace_table(mv.description or "", table)
            c.update_model_version(
                mv.name, mv.version, description=registry.set_verdict_line(desc, registry.verdict_line(verdict))
            )
    return metrics
