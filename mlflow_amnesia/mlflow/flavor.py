"""The ``mlflow_amnesia`` MLflow flavor: ``save_model``, ``log_model``, ``load_model``, pyfunc.

A model version of this flavor is its ``MLmodel`` (flavors ``mlflow_amnesia`` and
``python_function``, whose ``loader_module`` is ``mlflow_amnesia.flavor``: the kept import path
that re-exports :func:`_load_pyfunc`, named by every version registered so far) and the ``data/``
directory that :mod:`mlflow_amnesia.version.files` lays out, reads and writes. A *segment* is a
version's reference to one recorded phase (:mod:`mlflow_amnesia.recording.phase`): its delta store stays
at its URL and is never copied into the version; loading reads the version's files only.

Loading trusts none of these files: :class:`~mlflow_amnesia.version.files.VersionFiles` checks
every one before allocating and names the version's file in its errors; no code an artifact
names is imported (:func:`mlflow_amnesia.learning.models.check_builder`), nothing is unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import IndexFormatError, InputError, ManifestFormatError, PurgedVersionError  # noqa: F401 - re-exported
from ..recording.phase import Segment
from ..version.files import (  # noqa: F401 - the readers, re-exported from their historical home
    DATA,
    TOMBSTONE,
    check_not_purged,
    read_arch,
    read_forgotten,
    read_rolled_back,
    read_tombstone,
    read_weights,
    write_files,
)
from ..version.info import FORMAT_VERSION, VersionInfo
from ..version.model import AmnesiaModel, read_model

__all__ = [
    "FLAVOR_NAME",
    "FORMAT_VERSION",
    "AmnesiaModel",
    "Segment",
    "VersionInfo",
    "load_model",
    "log_model",
    "read_info",
    "save_model",
]

FLAVOR_NAME = "mlflow_amnesia"


def read_info(raw: bytes, where: str) -> VersionInfo:
    """``data/amnesia.json``, checked (:meth:`VersionInfo.parse`)."""
    return VersionInfo.parse(raw, where)


# ---------------------------------------------------------------------------------------------
# save / log


def save_model(
    amnesia_model: AmnesiaModel,
    path: str | os.PathLike,
    mlflow_model: Any = None,
    *,
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: list[str] | None = None,
    metadata: dict | None = None,
) -> None:
    """Write ``amnesia_model`` to a local directory in this flavor's format.

    ``input_example`` defaults to an all-zero image: training images are personal data and must
    not end up in the artifacts as an example.
    """
    import mlflow
    from mlflow.models import Model, ModelSignature
    from mlflow.models.utils import _save_example
    from mlflow.types import Schema, TensorSpec
    from mlflow.utils.environment import _mlflow_conda_env, _PythonEnv
    from mlflow.utils.model_utils import _validate_and_prepare_target_save_path

    if not isinstance(amnesia_model, AmnesiaModel):
        raise TypeError("save_model expects an AmnesiaModel (see mlflow_amnesia.mlflow.flavor.AmnesiaModel)")
    path = os.path.abspath(path)
    _validate_and_prepare_target_save_path(path)
    am = amnesia_model
    info = write_files(
        Path(path, DATA),
        module=am.module,
        arch=am.arch,
        info=am.info,
        segments=am.segments,
        rolled_back=am.rolled_back,
        forgotten=am.forgotten,
        format_version=FORMAT_VERSION,
    )

    if mlflow_model is None:
        mlflow_model = Model()
    shape = tuple(int(s) for s in info["input_shape"])
    if signature is None:
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(info["num_classes"])))]),
        )
    mlflow_model.signature = signature
    if input_example is None:
        input_example = np.zeros((1, *shape), dtype=np.float32)
    _save_example(mlflow_model, input_example, path)
    if metadata:
        mlflow_model.metadata = metadata

    mlflow_model.add_flavor(
        FLAVOR_NAME,
        data=DATA,
        format_version=FORMAT_VERSION,
        torch_version=str(torch.__version__),
    )
    mlflow.pyfunc.add_to_model(
        mlflow_model,
        loader_module="mlflow_amnesia.flavor",
        data=DATA,
        conda_env="conda.yaml",
        python_env="python_env.yaml",
    )
    mlflow_model.save(os.path.join(path, "MLmodel"))

    from .._version import __version__

    reqs = pip_requirements or [
        f"mlflow-amnesia=={__version__}",
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
    ]
    Path(path, "requirements.txt").write_text("\n".join(reqs) + "\n")
    import yaml

    Path(path, "conda.yaml").write_text(yaml.safe_dump(_mlflow_conda_env(additional_pip_deps=reqs)))
    _PythonEnv.current().to_yaml(os.path.join(path, "python_env.yaml"))


def log_model(
    amnesia_model: AmnesiaModel,
    name: str = "model",
    *,
    registered_model_name: str | None = None,
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: list[str] | None = None,
    metadata: dict | None = None,
    params: dict | None = None,
    tags: dict | None = None,
    await_registration_for: int = 300,
):
    """Log ``amnesia_model`` to the active run (MLflow 3 logged model); optionally register it."""
    import mlflow

    import mlflow_amnesia.mlflow.flavor as this

    return mlflow.models.Model.log(
        artifact_path=None,
        name=name,
        flavor=this,
        amnesia_model=amnesia_model,
        registered_model_name=registered_model_name,
        signature=signature,
        input_example=input_example,
        pip_requirements=pip_requirements,
        metadata=metadata,
        params=params,
        tags=tags,
        await_registration_for=await_registration_for,
    )


def load_model(model_uri: str, dst_path: str | None = None, *, builders: Iterable[str] = ()) -> AmnesiaModel:
    """Load a version (``models:/NAME/3``, ``runs:/...``, a local path); reads no delta chunk.

    ``builders``: ``package.module:function`` architecture builders this version's ``arch.json``
    may name (with ``MLFLOW_AMNESIA_ALLOWED_BUILDERS`` and installed entry points): no other
    code a version's files name is ever imported.
    """
    import mlflow

    if os.path.isdir(model_uri):
        local = Path(model_uri)
    else:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst_path))
    return read_model(local, label=model_uri, builders=builders)


class _PyFuncWrapper:
    """pyfunc view: ``predict`` on a batch of images returns class probabilities."""

    def __init__(self, model: AmnesiaModel):
        self.model = model

    def get_raw_model(self) -> AmnesiaModel:
        return self.model

    def predict(self, data: Any, params: dict | None = None) -> np.ndarray:
        if hasattr(data, "to_numpy"):
            data = (
                np.stack([np.asarray(v, dtype=np.float32) for v in data.iloc[:, 0]])
                if data.shape[1] == 1
                else data.to_numpy()
            )
        return self.model.predict_proba(np.asarray(data, dtype=np.float32))


def _load_pyfunc(path: str, model_config: dict | None = None) -> _PyFuncWrapper:
    # Builders are allowed by MLFLOW_AMNESIA_ALLOWED_BUILDERS only, never by model_config, which
    # MLflow may fill from the MLmodel file: an artifact must not allow its own code.
    p = Path(path)
    return _PyFuncWrapper(read_model(p.parent if p.name == DATA else p))
