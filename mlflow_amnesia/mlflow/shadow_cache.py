"""The audit's shadow models cached as MLflow runs: the :class:`~mlflow_amnesia.audit.privacy.ShadowCache`
of the MLflow layer.

One run per cache key in the experiment ``mlflow-amnesia-shadows``, tagged ``amnesia.shadow_key``
(:data:`~mlflow_amnesia.tags.TAG_SHADOW_KEY`), its artifacts ``shadows/`` the saved
:class:`~mlflow_amnesia.audit.shadow.ShadowSet` and attack models. Only FINISHED runs are reused,
and a set whose content does not hash to its tag is refused, never built.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..audit.membership import AttackModels
from ..audit.privacy import SHADOW_EXPERIMENT
from ..audit.shadow import ShadowSet
from ..errors import InputError
from ..tags import TAG_SHADOW_KEY
from .registry import filter_literal

__all__ = ["MlflowShadowCache"]


class MlflowShadowCache:
    """Shadow sets as runs of the ``mlflow-amnesia-shadows`` experiment of the current tracking store."""

    def load(self, key: str) -> tuple[ShadowSet, AttackModels, str] | None:
        import mlflow

        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(SHADOW_EXPERIMENT)
        if exp is None:
            return None
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{TAG_SHADOW_KEY}` = {filter_literal(key)} and attributes.status = 'FINISHED'",
            max_results=1,
        )
        if not runs:
            return None
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
        return shadows, attack, run_id

    def save(self, key: str, shadows: ShadowSet, attack: AttackModels) -> str:
        import mlflow

        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(SHADOW_EXPERIMENT)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(SHADOW_EXPERIMENT)
        run = client.create_run(exp_id, run_name=f"shadows-{key[:12]}", tags={TAG_SHADOW_KEY: key})
        try:
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp) / "shadows"
                shadows.save(d)
                attack.save(d)
                client.log_artifacts(run.info.run_id, str(d), artifact_path="shadows")
            client.log_param(run.info.run_id, "n_shadows", shadows.n_shadows)
            client.set_terminated(run.info.run_id, "FINISHED")
        except BaseException:
            client.set_terminated(run.info.run_id, "FAILED")
            raise
        return run.info.run_id
