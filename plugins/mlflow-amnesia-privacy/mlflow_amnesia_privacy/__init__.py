"""``amnesia-privacy``: the mlflow-amnesia audit as an MLflow model evaluator.

    mlflow.models.evaluate("models:/digits-resnet/2", data, model_type="classifier",
                           evaluators=["amnesia-privacy"],
                           evaluator_config={"amnesia-privacy": {"shadows": 4}})

runs the same audit as ``mlflow-amnesia audit`` (accuracy, membership inference on the
version's forgotten records, model inversion) and logs its metrics and the inversion grid on the
evaluation run. The audit rebuilds the version's own training and held-out data from its
recorded data spec; ``data`` is what ``mlflow.models.evaluate`` requires and is not used
(pass, e.g., a few held-out images flattened to (N, C*H*W): evaluate wants 2-D data). Config keys: ``shadows``, ``shadow_seed``,
``inversion_iterations``, ``process_every``, ``retain_sample``, ``data_root``, ``privacy``.
"""

from __future__ import annotations

import tempfile

from mlflow.exceptions import MlflowException
from mlflow.models.evaluation.base import EvaluationResult, ModelEvaluator

_SETTINGS = ("shadows", "shadow_seed", "inversion_iterations", "process_every", "retain_sample", "inversion_classes")


class AmnesiaPrivacyEvaluator(ModelEvaluator):
    """Privacy audit of an ``mlflow_amnesia`` model version (see the module docstring)."""

    @classmethod
    def can_evaluate(cls, *, model_type, evaluator_config, **kwargs) -> bool:
        return model_type in (None, "classifier")

    def evaluate(self, *, model_type, dataset, run_id, evaluator_config, model=None, **kwargs):
        import mlflow

        from mlflow_amnesia.audit import audit_model
        from mlflow_amnesia.audit.privacy import AuditSettings
        from mlflow_amnesia.flavor import AmnesiaModel

        try:
            raw = model.get_raw_model() if model is not None else None
        except (NotImplementedError, AttributeError):
            raw = None
        if not isinstance(raw, AmnesiaModel):
            raise MlflowException.invalid_parameter_value(
                "the amnesia-privacy evaluator audits models of the mlflow_amnesia flavor "
                "(registered by `mlflow-amnesia train` or `forget`); this model is not one"
            )
        cfg = dict(evaluator_config or {})
        unknown = sorted(set(cfg) - set(_SETTINGS) - {"data_root", "privacy"})
        if unknown:
            raise MlflowException.invalid_parameter_value(
                f"unknown amnesia-privacy config key(s) {unknown}; known: {sorted(_SETTINGS + ('data_root', 'privacy'))}"
            )
        settings = AuditSettings(**{k: cfg[k] for k in _SETTINGS if k in cfg})
        privacy = bool(cfg.get("privacy", True))
        with tempfile.TemporaryDirectory() as tmp:
            metrics = audit_model(raw, data_root=cfg.get("data_root"), privacy=privacy, settings=settings, artifact_dir=tmp)
            client = mlflow.MlflowClient()
            now = mlflow.utils.time.get_current_time_millis()
            client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()])
            artifacts = {}
            if privacy:
                client.log_artifact(run_id, f"{tmp}/inversion.png", "amnesia-privacy")
        return EvaluationResult(metrics=metrics, artifacts=artifacts, run_id=run_id)
