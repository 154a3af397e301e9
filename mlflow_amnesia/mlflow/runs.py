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
    refuse_unaddressable(artifact_uri, "the run's artifact location")
    return f"{artifact_uri.rstrip('/')}/amnesia"


def refuse_unaddressable(artifact_uri: str, what: str) -> None:
    """Raise :class:`InputError` if a delta store cannot live under ``artifact_uri`` (an
    ``mlflow-artifacts:`` proxy, or a scheme fsspec does not know): ``--store-uri`` is needed."""
    scheme = urlparse(artifact_uri).scheme
    if scheme in PROXY_SCHEMES or (scheme and len(scheme) > 1 and scheme not in fsspec.available_protocols()):
        raise InputError(
            f"{what} {artifact_uri!r} is not addressable by fsspec, so the delta store "
            "cannot live there: pass --store-uri (a local path, s3://bucket/prefix, ...)."
        )


def check_store_location(store_uri: str | None) -> None:
    """Before ``train`` starts its run: without ``store_uri`` the store goes under the run's
    artifact location, which is the experiment's (or, under ``mlflow run``, the project run's):
    refuse one the store cannot live under now, so no run is created only to fail. Creates nothing;
    an experiment that does not exist yet (its location is the server's to choose) is left to
    :func:`phase_base`."""
    import mlflow
    from mlflow.entities import Experiment
    from mlflow.environment_variables import MLFLOW_EXPERIMENT_ID, MLFLOW_EXPERIMENT_NAME

    if store_uri:
        return
    c = mlflow.MlflowClient()
    if os.environ.get("MLFLOW_RUN_ID"):
        run = c.get_run(os.environ["MLFLOW_RUN_ID"])
        refuse_unaddressable(run.info.artifact_uri, "the run's artifact location")
        return
    active = mlflow.active_run()
    exp: Experiment | None
    if active is not None:
        exp = c.get_experiment(active.info.experiment_id)
    elif MLFLOW_EXPERIMENT_NAME.get():
        exp = c.get_experiment_by_name(MLFLOW_EXPERIMENT_NAME.get())
    else:
        from mlflow.tracking.fluent import _get_experiment_id  # creates nothing without MLFLOW_EXPERIMENT_NAME

        exp_id = MLFLOW_EXPERIMENT_ID.get() or _get_experiment_id()
        exp = c.get_experiment(exp_id) if exp_id else None
    if exp is not None and exp.artifact_location:
        refuse_unaddressable(exp.artifact_location, f"the artifact location of experiment {exp.name!r}")


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


def end_quietly(client, run_id: str, status: str) -> None:
    """End a bookkeeping run (a ledger entry, a shadow pool or member, a killed train's run) without
    MLflow's "View run ... at" lines on stdout: against a tracking server MLflow prints them for every
    run it ends, and a command's output should stay its own lines."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        client.set_terminated(run_id, status)
