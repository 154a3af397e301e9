"""Where a training phase keeps its delta store and its lossless training state.

Each recorded phase gets a *base* URL holding ``deltas/`` (the DeltaStore) and ``training/``
(initial weights, batch order, final optimizer state), all sealed under the record key
(:mod:`mlflow_amnesia.crypto`); files in clear written by earlier versions are still read. By default the base lies inside the
run's artifact location, when fsspec can address it; an ``mlflow-artifacts:`` proxy (or any
scheme fsspec does not know) needs ``--store-uri``.
"""

from __future__ import annotations

import io
import os
from typing import Any
from urllib.parse import urlparse

import fsspec
import numpy as np
import torch

from .errors import InputError
from .fs import url_to_fs, write_url

_PROXY_SCHEMES = {"mlflow-artifacts", "runs", "models", "dbfs", "http", "https"}


def phase_base(artifact_uri: str, run_id: str, store_uri: str | None) -> str:
    """The base URL of a run's recorded phase (``<base>/deltas``, ``<base>/training``)."""
    if store_uri:
        return f"{store_uri.rstrip('/')}/{run_id}"
    scheme = urlparse(artifact_uri).scheme
    if scheme in _PROXY_SCHEMES or (scheme and len(scheme) > 1 and scheme not in fsspec.available_protocols()):
        raise InputError(
            f"the run's artifact location {artifact_uri!r} is not addressable by fsspec, so the delta store "
            "cannot live there: pass --store-uri (a local path, s3://bucket/prefix, ...)."
        )
    return f"{artifact_uri.rstrip('/')}/amnesia"


#: Write ``data`` to ``url`` whole and durably (:func:`mlflow_amnesia.fs.write_url`).
write_bytes = write_url


def read_bytes(url: str) -> bytes:
    fs, path = url_to_fs(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise InputError(
            f"{url} does not exist: the training state of this model version is missing (was it purged or moved?)."
        ) from None


def save_state(url: str, state: Any, *, key: bytes | None) -> None:
    """torch.save a state dict (tensors, numbers, nested dicts) to an fsspec URL, sealed under ``key``.

    ``key`` (the record key) is required: the initial weights and the optimizer state of a
    recorded phase, with its deltas, rebuild every intermediate model. ``key=None`` writes the
    file in clear (what versions before sealed training files wrote).
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(url, _seal(buf.getvalue(), url, key))


def load_state(url: str, *, key: bytes | None = None, sealed: bool = False) -> Any:
    """A state dict written by :func:`save_state` (sealed: needs ``key``; in clear: read as is).

    ``sealed``: the phase wrote its files sealed (its delta store is sealed), so a file in clear
    there was put in place by someone else and is refused, never trusted.
    """
    data = _unseal(read_bytes(url), url, key, sealed)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch signals a damaged file in many ways
        raise InputError(f"{url} is damaged ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
                         "restore it from a backup of the training run's artifacts.") from None


def save_array(url: str, a: np.ndarray, *, key: bytes | None) -> None:
    """np.save an array (no pickle) to an fsspec URL, sealed under ``key`` (None: in clear)."""
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    write_bytes(url, _seal(buf.getvalue(), url, key))


def load_array(url: str, *, key: bytes | None = None, sealed: bool = False) -> np.ndarray:
    """An array written by :func:`save_array` (sealed: needs ``key``; in clear: read as is;
    ``sealed`` as in :func:`load_state`)."""
    data = _unseal(read_bytes(url), url, key, sealed)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{url} is damaged ({type(e).__name__}: {e}): restore it from a backup of the "
                         "training run's artifacts.") from None


def _role(url: str) -> str:
    """A training file's role: its name (``initial_state.pt``, ``batch_order.npy``...), bound into its seal."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def _seal(data: bytes, url: str, key: bytes | None) -> bytes:
    from .crypto import seal_file

    return data if key is None else seal_file(data, key, _role(url))


def _unseal(data: bytes, url: str, key: bytes | None, sealed: bool = False) -> bytes:
    from .crypto import is_sealed, open_file
    from .errors import StoreError

    if is_sealed(data):
        return open_file(data, key, _role(url), url)
    if sealed:
        raise StoreError(f"{url} is in clear, but this phase's training files were written sealed under the record "
                         "key: it was replaced by someone else. Restore it from a backup of the training run's "
                         "artifacts; nothing was changed.")
    return data


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
