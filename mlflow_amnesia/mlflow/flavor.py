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

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import IndexFormatError, InputError, ManifestFormatError, PurgedVersionError  # noqa: F401 - re-exported
from ..recording.phase import Segment
from ..tags import TAG_PURGE_STARTED, TAG_PURGED, TAG_SUPERSEDED
from ..version.files import (  # noqa: F401 - the readers, re-exported from their historical home
    DATA,
    INFO,
    TOMBSTONE,
    check_not_purged,
    read_arch,
    read_forgotten,
    read_rolled_back,
    read_tombstone,
    read_weights,
    write_files,
)
from ..version.info import FORMAT_VERSION, RESTORE, VersionInfo, text
from ..version.model import AmnesiaModel, read_model

__all__ = [
    "FLAVOR_NAME",
    "FORMAT_VERSION",
    "AmnesiaModel",
    "SupersededVersionWarning",
    "get_default_conda_env",
    "get_default_pip_requirements",
    "Segment",
    "VersionInfo",
    "load_model",
    "log_model",
    "read_info",
    "save_model",
]

FLAVOR_NAME = "mlflow_amnesia"
#: where a model keeps this package's wheel (:mod:`mlflow_amnesia.mlflow.wheel`), for pip
WHEELS = "wheels"
#: the pyfunc's ``input`` param: raw pixels (default) or already normalised tensors
INPUT_PARAM, RAW, NORMALIZED = "input", "raw", "normalized"
#: the pyfunc's output columns: the predicted class's name and index, a probability per class
LABEL, LABEL_INDEX, PROB = "label", "label_index", "prob_"
#: the pyfunc's ``output`` (a param, or ``model_config`` at load): the table (default), or one of
#: its parts alone: ``label_index`` or ``label`` (1-D, what ``mlflow.models.evaluate``'s classifier
#: evaluator expects), ``probabilities`` (N x classes)
OUTPUT_PARAM, TABLE, PROBABILITIES = "output", "table", "probabilities"
_OUTPUTS = (TABLE, LABEL_INDEX, LABEL, PROBABILITIES)


def read_info(raw: bytes, where: str) -> VersionInfo:
    """``data/amnesia.json``, checked (:meth:`VersionInfo.parse`)."""
    return VersionInfo.parse(raw, where)


# ---------------------------------------------------------------------------------------------
# environment


def get_default_pip_requirements() -> list[str]:
    """What a model of this flavor needs to be served, as pip requirement lines.

    This package is on no index, so the first line is its wheel, which :func:`save_model` writes
    into the model (``wheels/``, a path relative to the model directory, where MLflow runs pip);
    then MLflow, torch and numpy pinned to the versions that wrote the model (torch without its
    local build tag, ``2.14.1`` for ``2.14.1+cu130``, so pip can pick the build the machine has).
    """
    import mlflow

    from .wheel import package_wheel

    return [
        f"{WHEELS}/{package_wheel().name}",
        f"mlflow=={mlflow.__version__}",
        f"torch=={_base_version(torch.__version__)}",
        f"numpy=={np.__version__}",
    ]


def get_default_conda_env() -> dict:
    """The conda environment of :func:`get_default_pip_requirements` (MLflow's own layout)."""
    from mlflow.utils.environment import _mlflow_conda_env

    return _mlflow_conda_env(additional_pip_deps=get_default_pip_requirements())


def _base_version(v: str) -> str:
    return str(v).split("+")[0]


# ---------------------------------------------------------------------------------------------
# save / log


def _signature(am: AmnesiaModel) -> Any:
    """Outputs named per class, the ``input`` param; no input schema (see :func:`save_model`)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    outputs: list[ColSpec | TensorSpec] = [ColSpec("string", LABEL), ColSpec("long", LABEL_INDEX)]
    outputs += [ColSpec("float", f"{PROB}{c}") for c in am.class_names]
    return ModelSignature(
        inputs=None,
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec(INPUT_PARAM, "string", RAW), ParamSpec(OUTPUT_PARAM, "string", TABLE)]),
    )


def input_description(am: AmnesiaModel) -> dict:
    """What the model's pyfunc takes, written to the MLmodel's ``metadata`` (shown in the UI)."""
    shape = [int(s) for s in (am.info.input_shape or [])]
    norm = am.normalization
    return {
        "input_shape": shape,
        "raw_range": [0, norm["scale"]] if norm else None,
        "normalization": norm,
        "accepts": (
            f"raw pixels in 0..{norm['scale']:g} (uint8, int or float) shaped (N, {', '.join(map(str, shape))}), "
            f"(N, H, W) for one channel, (N, H, W, C) channels last, or flat (N, {int(np.prod(shape))}); "
            f"params={{'{INPUT_PARAM}': '{NORMALIZED}'}} for already normalised float tensors"
            if norm
            else f"normalised float tensors shaped (N, {', '.join(map(str, shape))})"
        ),
        "outputs": f"{LABEL} (class name), {LABEL_INDEX} (class index), {PROB}<class> (probability per class)",
    }


def save_model(
    amnesia_model: AmnesiaModel,
    path: str | os.PathLike,
    conda_env: Any = None,
    mlflow_model: Any = None,
    code_paths: list[str] | None = None,
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: Any = None,
    extra_pip_requirements: Any = None,
    metadata: dict | None = None,
    **kwargs: Any,
) -> None:
    """Write ``amnesia_model`` to a local directory in this flavor's format.

    Its pyfunc takes raw pixels as the data set has them and normalises them itself
    (:meth:`AmnesiaModel.images`); the signature therefore declares no input schema (MLflow's
    would fix one shape and dtype and refuse the others: uint8, flat, channels last) but the
    ``input`` param (``raw``, or ``normalized`` for the tensor path), the outputs (``label``,
    ``label_index``, ``prob_<class>``), and the MLmodel's metadata ``mlflow_amnesia.input`` spells
    out the inputs. ``input_example`` defaults to ``amnesia_model.example`` (class means of
    held-out images, raw: never a training record) or, lacking one, a mid-grey image.

    ``conda_env``, ``code_paths``, ``pip_requirements`` and ``extra_pip_requirements`` are
    MLflow's (see :func:`mlflow.pytorch.save_model`); the defaults
    (:func:`get_default_pip_requirements`) include this package's wheel, written to ``wheels/``.
    """
    import mlflow
    from mlflow.models import Model
    from mlflow.models.utils import _save_example
    from mlflow.utils.environment import (
        _CONDA_ENV_FILE_NAME,
        _CONSTRAINTS_FILE_NAME,
        _PYTHON_ENV_FILE_NAME,
        _REQUIREMENTS_FILE_NAME,
        _process_conda_env,
        _process_pip_requirements,
        _PythonEnv,
        _validate_env_arguments,
    )
    from mlflow.utils.file_utils import write_to
    from mlflow.utils.model_utils import _validate_and_copy_code_paths, _validate_and_prepare_target_save_path

    from .wheel import package_wheel

    if not isinstance(amnesia_model, AmnesiaModel):
        raise TypeError("save_model expects an AmnesiaModel (see mlflow_amnesia.mlflow.flavor.AmnesiaModel)")
    _validate_env_arguments(conda_env, pip_requirements, extra_pip_requirements)
    path = os.path.abspath(path)
    _validate_and_prepare_target_save_path(path)
    am = amnesia_model
    code_dir = _validate_and_copy_code_paths(code_paths, path)
    wheel = package_wheel()
    Path(path, WHEELS).mkdir()
    Path(path, WHEELS, wheel.name).write_bytes(wheel.data)
    write_files(
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
    mlflow_model.signature = signature if signature is not None else _signature(am)
    if input_example is None:
        input_example = am.example if am.example is not None else _grey_example(am)
    _save_example(mlflow_model, input_example, path)
    mlflow_model.metadata = {**(mlflow_model.metadata or {}), **(metadata or {})}
    mlflow_model.metadata.setdefault(FLAVOR_NAME, {})["input"] = input_description(am)

    mlflow_model.add_flavor(
        FLAVOR_NAME,
        data=DATA,
        format_version=FORMAT_VERSION,
        torch_version=str(torch.__version__),
        mlflow_amnesia_version=wheel.version,
        code=code_dir,
    )
    mlflow.pyfunc.add_to_model(
        mlflow_model,
        loader_module="mlflow_amnesia.flavor",
        data=DATA,
        conda_env=_CONDA_ENV_FILE_NAME,
        python_env=_PYTHON_ENV_FILE_NAME,
        code=code_dir,
        model_config={OUTPUT_PARAM: TABLE},  # so mlflow.pyfunc.load_model(..., model_config=) may choose another
    )
    mlflow_model.save(os.path.join(path, "MLmodel"))

    if conda_env is None:
        default = get_default_pip_requirements() if pip_requirements is None else None
        conda_env, reqs, constraints = _process_pip_requirements(default, pip_requirements, extra_pip_requirements)
    else:
        conda_env, reqs, constraints = _process_conda_env(conda_env)
    import yaml

    with open(os.path.join(path, _CONDA_ENV_FILE_NAME), "w") as f:
        yaml.safe_dump(conda_env, stream=f, default_flow_style=False)
    if constraints:
        write_to(os.path.join(path, _CONSTRAINTS_FILE_NAME), "\n".join(constraints))
    write_to(os.path.join(path, _REQUIREMENTS_FILE_NAME), "\n".join(reqs))
    _PythonEnv.current().to_yaml(os.path.join(path, _PYTHON_ENV_FILE_NAME))


def _grey_example(am: AmnesiaModel) -> np.ndarray:
    shape = tuple(int(s) for s in (am.info.input_shape or ()))
    norm = am.normalization
    if norm is None:
        return np.zeros((1, *shape), np.float32)
    return np.full((1, *shape), round(float(norm["scale"]) / 2), dtype=np.uint8 if norm["scale"] <= 255 else np.float32)


def log_model(
    amnesia_model: AmnesiaModel,
    name: str = "model",
    *,
    conda_env: Any = None,
    code_paths: list[str] | None = None,
    registered_model_name: str | None = None,
    signature: Any = None,
    input_example: Any = None,
    await_registration_for: int = 300,
    pip_requirements: Any = None,
    extra_pip_requirements: Any = None,
    metadata: dict | None = None,
    params: dict | None = None,
    tags: dict | None = None,
    model_type: str | None = None,
    step: int = 0,
    model_id: str | None = None,
):
    """Log ``amnesia_model`` to the active run (an MLflow 3 logged model named ``name``);
    optionally register it. The arguments are MLflow's (:func:`mlflow.pytorch.log_model`)."""
    import mlflow

    import mlflow_amnesia.mlflow.flavor as this

    return mlflow.models.Model.log(
        artifact_path=None,
        name=name,
        flavor=this,
        amnesia_model=amnesia_model,
        conda_env=conda_env,
        code_paths=code_paths,
        registered_model_name=registered_model_name,
        signature=signature,
        input_example=input_example,
        await_registration_for=await_registration_for,
        pip_requirements=pip_requirements,
        extra_pip_requirements=extra_pip_requirements,
        metadata=metadata,
        params=params,
        tags=tags,
        model_type=model_type,
        step=step,
        model_id=model_id,
    )


# ---------------------------------------------------------------------------------------------
# load


def flavor_configuration(local: Path, label: str) -> dict:
    """This flavor's configuration in ``local``'s MLmodel, read through MLflow's helper and checked:
    a format this release does not know is refused, a model saved under another torch warned of."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.model_utils import _get_flavor_configuration

    if not (local / "MLmodel").is_file():
        if (local / INFO).is_file():  # a bare data/ directory written by write_files
            return {"data": DATA, "format_version": FORMAT_VERSION}
        return {}
    try:
        conf = _get_flavor_configuration(str(local), FLAVOR_NAME)
    except MlflowException:
        return {}  # read_model names the flavors the MLmodel has
    except Exception as e:  # noqa: BLE001 - an MLmodel MLflow cannot parse
        raise InputError(f"the MLmodel of {label} cannot be read ({text(e, 160)}); {RESTORE}.") from None
    fmt = conf.get("format_version")
    if fmt != FORMAT_VERSION:
        newer = isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT_VERSION
        raise InputError(
            f"{label} is in mlflow_amnesia flavor format {text(repr(fmt), 40)}, which this release "
            f"(format {FORMAT_VERSION}) cannot read: "
            + (
                "upgrade mlflow-amnesia (pip install -U mlflow-amnesia)."
                if newer
                else f"its MLmodel is damaged; {RESTORE}."
            )
        )
    saved = conf.get("torch_version")
    if saved and _base_version(saved) != _base_version(torch.__version__):
        warnings.warn(
            f"{label} was saved with torch {saved} and is loaded with torch {torch.__version__}: "
            "its predictions may differ slightly; serve it in its own environment "
            "(mlflow models serve without --env-manager local) to get the saved versions",
            UserWarning,
            stacklevel=3,
        )
    data = conf.get("data", DATA)
    if data != DATA:
        raise InputError(f"{label}'s MLmodel names data directory {text(repr(data), 40)}, not {DATA!r}; {RESTORE}.")
    return dict(conf)


def load_model(model_uri: str, dst_path: str | None = None, *, builders: Iterable[str] = ()) -> AmnesiaModel:
    """Load a version (``models:/NAME/3``, ``models:/NAME@alias``, ``runs:/...``, a local path);
    reads no delta chunk.

    ``builders``: ``package.module:function`` architecture builders this version's ``arch.json``
    may name (with ``MLFLOW_AMNESIA_ALLOWED_BUILDERS`` and installed entry points): no other
    code a version's files name is ever imported. A version a forget superseded and nobody
    purged loads with a warning: it still holds the forgotten records' contribution.
    """
    import mlflow

    if os.path.isdir(model_uri):
        local = Path(model_uri)
    else:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst_path))
    conf = flavor_configuration(local, model_uri)
    am = read_model(local, label=model_uri, builders=builders)
    am.example = _read_example(local)
    warn_if_superseded(local, model_uri, conf)
    return am


def _read_example(local: Path) -> np.ndarray | None:
    """The version's input example (raw images), carried to a forget's child; None if absent."""
    p = local / "input_example.json"
    try:
        if not p.is_file() or p.stat().st_size > 16 << 20:
            return None
        obj = json.loads(p.read_text())
        a = np.asarray(obj.get("inputs") if isinstance(obj, dict) else obj)
        return a.astype(np.uint8) if a.dtype.kind in "iu" and a.size and a.min() >= 0 and a.max() <= 255 else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def warn_if_superseded(local: Path, label: str, conf: dict | None = None) -> str | None:
    """Warn (and return the warning) when the registered version in ``local`` was superseded by a
    forget and is not purged: it still holds the forgotten records' contribution.

    The version is the one MLflow recorded when it downloaded a ``models:/`` URI
    (``registered_model_meta``); its tags are read from the registry in
    ``MLFLOW_REGISTRY_URI``/``MLFLOW_TRACKING_URI``. A model not from the registry, or a registry
    out of reach, is not warned about (loading never fails for it)."""
    import yaml

    meta = local / "registered_model_meta"
    try:
        m = yaml.safe_load(meta.read_text()) if meta.is_file() and meta.stat().st_size < 65536 else {}
        name, version = str(m["model_name"]), str(m["model_version"])
    except Exception:  # noqa: BLE001 - no registry record with these files
        return None
    try:
        from . import registry
        from .tracking import check_reachable, check_tracking_store

        check_tracking_store(create=False)  # never creates a database where the model is served
        check_reachable(timeout=2.0)  # seconds, not MLflow's minutes of retries, when the server is down
        tags = dict(registry.client().get_model_version(name, version).tags or {})
    except Exception:  # noqa: BLE001 - the registry is out of reach: serve without the check
        return None
    child = tags.get(TAG_SUPERSEDED)
    if not child or TAG_PURGED in tags or TAG_PURGE_STARTED in tags:
        return None
    msg = (
        f"{name} v{version} ({label}) was superseded by v{child}, which forgot records; this version "
        f"still holds their contribution: serve models:/{name}/{child}, and erase this one with "
        f"`mlflow-amnesia purge --model {name} --version {version}`"
    )
    warnings.warn(msg, SupersededVersionWarning, stacklevel=3)
    return msg


class SupersededVersionWarning(UserWarning):
    """A loaded or served version was superseded by a forget and still holds the forgotten records."""


class _PyFuncWrapper:
    """pyfunc view: ``predict`` on a batch of raw images returns a table naming the classes.

    ``params={"input": "normalized"}`` takes already normalised float tensors instead (the
    network's own input, as :meth:`AmnesiaModel.predict_proba`)."""

    def __init__(self, model: AmnesiaModel, output: str = TABLE):
        self.model = model
        self.output = output

    def get_raw_model(self) -> AmnesiaModel:
        return self.model

    def predict(self, data: Any, params: dict | None = None) -> Any:
        import pandas as pd
        from mlflow.exceptions import MlflowException

        p = dict(params or {})
        if p.get(OUTPUT_PARAM) == TABLE and self.output != TABLE:
            p.pop(OUTPUT_PARAM)  # the signature's default: the model_config given at load decides
        mode, output = p.get(INPUT_PARAM, RAW), p.get(OUTPUT_PARAM, self.output)
        try:
            if mode not in (RAW, NORMALIZED):
                raise InputError(f"params {INPUT_PARAM!r} is {text(repr(mode), 40)}: use {RAW!r} or {NORMALIZED!r}")
            _check_output(output)
            x = self.model.images(_as_array(data), raw=mode == RAW)
        except InputError as e:  # a bad request: HTTP 400 with this line when served, not a 500
            raise MlflowException.invalid_parameter_value(str(e)) from None
        probs = self.model.predict_proba(x)
        if output == PROBABILITIES:
            return probs
        table = probability_table(probs, self.model.class_names, pd)
        return table if output == TABLE else table[output].to_numpy()


def _check_output(output: object) -> str:
    if output not in _OUTPUTS:
        raise InputError(f"{OUTPUT_PARAM!r} is {text(repr(output), 40)}: use one of {', '.join(map(repr, _OUTPUTS))}")
    return str(output)


def probability_table(probs: np.ndarray, classes: list[str], pd: Any) -> Any:
    """``label`` (class name), ``label_index`` and ``prob_<class>`` per row of ``probs``."""
    idx = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    cols: dict[str, Any] = {
        LABEL: [classes[i] for i in idx],
        LABEL_INDEX: idx.astype(np.int64),
    }
    for j, c in enumerate(classes):
        cols[f"{PROB}{c}"] = probs[:, j].astype(np.float32)
    return pd.DataFrame(cols)


def _as_array(data: Any) -> Any:
    """What MLflow hands the pyfunc (an array, a DataFrame of pixel columns or of one column of
    images, a dict of one tensor, a list) as one array."""
    if isinstance(data, dict):
        if len(data) != 1:
            raise InputError(f"expected one tensor of images, got inputs named {sorted(map(str, data))[:5]}")
        data = next(iter(data.values()))
    if hasattr(data, "to_numpy") and hasattr(data, "columns"):
        if data.shape[1] == 1 and len(data) and np.ndim(data.iloc[0, 0]) > 0:
            return np.stack([np.asarray(v) for v in data.iloc[:, 0]])
        return data.to_numpy()
    return data


def _load_pyfunc(path: str, model_config: dict | None = None) -> _PyFuncWrapper:
    # Builders are allowed by MLFLOW_AMNESIA_ALLOWED_BUILDERS only, never by model_config, which
    # MLflow may fill from the MLmodel file: an artifact must not allow its own code.
    p = Path(path)
    local = p.parent if p.name == DATA else p
    conf = flavor_configuration(local, str(local))
    try:
        output = _check_output((model_config or {}).get(OUTPUT_PARAM, TABLE))
    except InputError as e:
        raise InputError(f"model_config {e}") from None
    wrapper = _PyFuncWrapper(read_model(local), output)
    warn_if_superseded(local, str(local), conf)
    return wrapper
