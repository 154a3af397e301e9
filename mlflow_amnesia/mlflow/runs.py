"""Where a run's recorded phase lives, and the job's MLflow run.

Each recorded phase gets a *base* URL (:class:`mlflow_amnesia.recording.phase.Phase`: ``deltas/`` and
``training/``). By default the base lies inside the run's artifact location, when fsspec can
address it; an ``mlflow-artifacts:`` proxy (or any scheme fsspec does not know) needs
``--store-uri``. The sealed training files are read and written by :mod:`mlflow_amnesia.recording.phase`.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import fsspec

from ..errors import InputError
from ..recording.fs import PROXY_SCHEMES, write_url
from ..recording.phase import load_array, load_state, read_bytes, save_array, save_state  # noqa: F401 - their historical home


def phase_base(artifact_uri: str, run_id: str, store_uri: str | None) -> str:
    """The base URL of a run's recorded phase (``<base>/deltas``, ``<base>/training``)."""
    if store_uri:
        return f"{store_uri.rstrip('/')}/{run_id}"
    scheme = urlparse(artifact_uri).scheme
    if scheme in PROXY_SCHEMES or (scheme and len(scheme) > 1 and scheme not in fsspec.available_protocols()):
        raise InputError(
            f"the run's artifact location {artifact_uri!r} is not addressable by fsspec, so the delta store "
            "cannot live there: pass --store-uri (a local path, s3://bucket/prefix, ...)."
        )
    return f"{artifact_uri.rstrip('/')}/amnesia"


#: Write ``data`` to ``url`` whole and durably (:func:`mlflow_amnesia.recording.fs.write_url`).
write_bytes = write_url


def start_run(run_name: str, experiment_id: str | None = None):
    """Start this job's MLflow run; under ``mlflow run`` (MLFLOW_RUN_ID set) reuse the project's run."""
    import mlflow

    if os.environ.get("MLFLOW_RUN_ID"):
        return mlflow.start_run()
    return mlflow.start_run(run_name=run_name, experiment_id=experiment_id, nested=mlflow.active_run() is not None)


def log_params_once(params: dict) -> None:
    """Log params the active run does not have yet (``mlflow run`` logged the project's already,
    as typed, and MLflow refuses to change a param)."""
    import mlflow

    run = mlflow.active_run()
    have = mlflow.MlflowClient().get_run(run.info.run_id).data.params if run else {}
    new = {k: v for k, v in params.items() if k not in have}
    if new:
        mlflow.log_params(new)
