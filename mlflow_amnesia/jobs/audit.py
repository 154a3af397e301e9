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
from ..audit.privacy import SETTINGS_TAG, AuditSettings
from ..keys import load_key_for
from ..mlflow import registry
from ..mlflow.flavor import load_model
from ..progress import info as say
from ..tags import TAG_PURGE_STARTED
from .train import pool_exclusion

__all__ = ["AUDIT_PREFIXES", "LoggedFigures", "audit_version"]

AUDIT_PREFIXES = ("acc.", "loss.", "audit.")  # the figures an audit logs (metric names: a contract)


class LoggedFigures(dict):
    """An audit's figures read back from the run ``run_id`` that holds them (not computed again)."""

    def __init__(self, figures: dict[str, float], *, run_id: str) -> None:
        super().__init__(figures)
        self.run_id = run_id


def _ulira_request(mv, am, parent):
    """How the forget that made ``mv`` unlearned (its run's parameters), for U-LiRA on the shadow
    pool: the same test the forget's own audit ran (audit/ulira.py)."""
    from ..audit.ulira import UliraRequest, UnlearnSpec

    params = registry.client().get_run(mv.run_id).data.params if mv.run_id else {}
    spec = UnlearnSpec.from_params(params, method=(am.info.last_request or {}).get("method"))
    return UliraRequest(
        spec=spec, key=load_key_for(am.info.key_id, f"{mv.name} v{mv.version}", to="audit it"), parent=parent.module
    )


def audit_version(
    model_name: str,
    *,
    version: int | None = None,
    alias: str | None = None,
    data_root: str | None = None,
    privacy: bool = True,
    settings=None,
    log: bool = True,
    force: bool = False,
) -> dict[str, float]:
    """Audit a registered version and log the figures on the run that produced it (and its
    inversion grid as ``audit/inversion.png``, a forget's per-record statistics as
    ``audit/per_record.json``); the version's verdict tags and description are refreshed.

    A forget's child is audited beside its parent on the same records (the parent is loaded
    for that), with U-LiRA on the shadow pool as the forget's own audit ran it (the request's
    method from the forget run's parameters; logged as ``audit/ulira.json``); a purged parent
    cannot be, and the parent's figures the forget's own audit logged stay the ones the verdict
    uses.

    A version whose run holds an audit with the same settings (run tag ``amnesia.audit.settings``)
    is not audited again unless ``force``: its logged figures are returned as
    :class:`LoggedFigures` (after the same key check), since the same settings on the same
    weights give the same figures."""
    import mlflow

    from ..tags import TAG_PURGED

    mv = registry.resolve_version(model_name, version=version, alias=alias)
    am = load_model(registry.model_uri(mv))
    last = am.info.last_request
    forgot = last.get("method", "train") != "train" and int(last.get("n_records", 0)) > 0
    fingerprint = (settings or AuditSettings()).fingerprint(
        am.info.dataset or {}, am.info.input_shape or [], privacy=privacy, forgot=forgot
    )
    if not force and log and mv.run_id:
        logged = registry.client().get_run(mv.run_id).data.tags.get(SETTINGS_TAG)
        if logged == fingerprint:
            load_key_for(am.info.key_id, f"{model_name} v{mv.version}", to="audit it")  # as a fresh audit would
            held = registry.run_metrics(mv.run_id)
            return LoggedFigures({k: v for k, v in held.items() if k.startswith(AUDIT_PREFIXES)}, run_id=mv.run_id)
    parent_no = (mv.tags or {}).get(registry.TAG_PARENT)
    pmv = registry.client().get_model_version(model_name, parent_no) if parent_no is not None else None
    parent = None
    if pmv is not None and TAG_PURGED not in (pmv.tags or {}) and not (pmv.tags or {}).get(TAG_PURGE_STARTED):
        parent = load_model(registry.model_uri(pmv))
    elif pmv is not None:
        say(f"audit: v{parent_no} is purged: its figures from the forget's own audit stay the parent's")
    ulira = _ulira_request(mv, am, parent) if privacy and forgot and parent is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        metrics = audit_model(
            am,
            data_root=data_root,
            privacy=privacy,
            settings=settings,
            artifact_dir=tmp,
            what=f"{model_name} v{mv.version}",
            parent=parent,
            exclusion=lambda records, split, key: pool_exclusion(model_name, records, split, key),
            ulira=ulira,
        )
        if log and mv.run_id:
            c = mlflow.MlflowClient()
            now = mlflow.utils.time.get_current_time_millis()
            c.log_batch(mv.run_id, metrics=[mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()])
            if os.path.exists(f"{tmp}/inversion.png"):  # an audit that inverted (AuditSettings.inversion)
                c.log_artifact(mv.run_id, f"{tmp}/inversion.png", "audit")
            if privacy:
                if os.path.exists(f"{tmp}/{PER_RECORD_ARTIFACT}"):
                    c.log_artifact(mv.run_id, f"{tmp}/{PER_RECORD_ARTIFACT}", "audit")
                if ulira is not None and ulira.result is not None:
                    from ..audit.ulira import write_per_record

                    c.log_artifact(mv.run_id, write_per_record(ulira.result, f"{tmp}/ulira.json"), "audit")
            # every figure the run holds now, not only this audit's: an accuracy-only audit keeps
            # the privacy rows an earlier audit logged (the run's latest value of each metric)
            c.set_tag(mv.run_id, SETTINGS_TAG, fingerprint)
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
