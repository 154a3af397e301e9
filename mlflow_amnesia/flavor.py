"""The ``mlflow_amnesia`` MLflow flavor.

A model version of this flavor is a small directory::

    MLmodel                       flavors: mlflow_amnesia + python_function
    data/weights.pt               state dict (torch.save; read with weights_only=True: no pickle)
    data/arch.json                architecture spec (see mlflow_amnesia.models)
    data/amnesia.json             data spec, split, recipe, segments, lineage (JSON)
    data/segments/<k>/manifest.json      copy of segment k's delta-store manifest
    data/segments/<k>/record_index.bin   segment k's record index (keyed hashes only)
    data/rolled_back.npy          steps already subtracted along this version's lineage (int64)
    data/forgotten.npy            keyed hashes of every record forgotten along the lineage

A *segment* is one recorded training phase (the original training, or a repair after a forget):
its own delta store, addressed by URL and never copied into the version, plus its record index.
Step numbers are global across a version's segments, so "steps already rolled back" is one set.
Loading a version reads these files only; delta chunks are read lazily by a forget.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .errors import InputError, PurgedVersionError  # noqa: F401 - PurgedVersionError re-exported

FLAVOR_NAME = "mlflow_amnesia"
FORMAT_VERSION = 1
_DATA = "data"
_WEIGHTS = "weights.pt"
_ARCH = "arch.json"
_INFO = "amnesia.json"
_ROLLED_BACK = "rolled_back.npy"
_FORGOTTEN = "forgotten.npy"
_SEGMENTS = "segments"
TOMBSTONE = "purged.json"  # data/purged.json: written by `mlflow-amnesia purge` (see mlflow_amnesia.purge)


def check_not_purged(data: Path) -> None:
    """Raise :class:`PurgedVersionError` if ``data`` (a version's ``data/`` dir) holds a purge tombstone."""
    tomb = data / TOMBSTONE
    if not tomb.is_file():
        return
    try:
        t = json.loads(tomb.read_text())
    except ValueError:
        t = {}
    who = f"{t.get('model_name', 'this model')} v{t.get('version', '?')}"
    when = t.get("completed_at") or (f"started {t.get('started_at', '?')} and not finished: re-run `mlflow-amnesia purge "
                                     f"--model {t.get('model_name', 'NAME')} --version {t.get('version', 'N')}` to finish it")
    instead = f"load v{t['superseded_by']} (which forgot the records) or a later version" if t.get("superseded_by") else "load a later version"
    raise PurgedVersionError(
        f"{who} was purged ({when}): its weights were deleted for good because a later version forgot records "
        f"it held, so it cannot be loaded ({tomb}). Its lineage metadata is kept; {instead}."
    )


@dataclass
class Segment:
    """One recorded training phase: a delta store (by URL) and its record index."""

    role: str  # "train" | "repair" | "retrain" | ...
    store_url: str
    first_step: int
    last_step: int  # inclusive; last_step < first_step when the phase recorded nothing
    manifest: bytes = b""
    index: bytes = b""
    run_id: Optional[str] = None

    def to_json(self) -> dict:
        return {
            "role": self.role,
            "store_url": self.store_url,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "run_id": self.run_id,
        }

    def holds(self, steps: np.ndarray) -> np.ndarray:
        return (steps >= self.first_step) & (steps <= self.last_step)

    @property
    def n_steps(self) -> int:
        return max(0, self.last_step - self.first_step + 1)

    def open_store(self, key: Optional[bytes] = None):
        """The segment's DeltaStore, read through the manifest copied into the version.

        Its deltas are sealed under the record ``key``: reading them needs it; listing steps,
        sizes and ``verify`` (size and sha256) do not. A store of an older version (in clear)
        reads without it.
        """
        from .store import DeltaStore

        return DeltaStore.open(self.store_url, manifest=self.manifest, key=key)

    def open_index(self, key: bytes):
        from .index import RecordIndex

        return RecordIndex.from_bytes(self.index, key, name=f"record index of the {self.role} segment")


@dataclass
class AmnesiaModel:
    """A loaded version: the torch module plus what a forget or an audit needs."""

    module: torch.nn.Module
    arch: dict
    info: dict
    segments: list[Segment]
    rolled_back: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    forgotten: np.ndarray = field(default_factory=lambda: np.zeros((0, 16), np.uint8))

    @property
    def total_steps(self) -> int:
        return sum(s.n_steps for s in self.segments)

    @property
    def next_step(self) -> int:
        return max([s.last_step + 1 for s in self.segments] + [0])

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray | torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Class probabilities for a batch of images shaped (N, C, H, W) or flattened (N, C*H*W)."""
        self.module.eval()
        t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        shape = tuple(self.info["input_shape"])
        if t.ndim == 2 and t.shape[1] == int(np.prod(shape)):  # flattened images (tabular serving)
            t = t.reshape(-1, *shape)
        if t.ndim != 4 or tuple(t.shape[1:]) != shape:
            raise InputError(
                f"expected images shaped (N, {', '.join(map(str, shape))}), got {tuple(t.shape)}"
            )
        out = [torch.softmax(self.module(t[i : i + batch_size]), dim=1) for i in range(0, len(t), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.info["num_classes"]), np.float32)


# ---------------------------------------------------------------------------------------------
# save / log / load


def save_model(
    amnesia_model: AmnesiaModel,
    path: str | os.PathLike,
    mlflow_model: Any = None,
    *,
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: Optional[list[str]] = None,
    metadata: Optional[dict] = None,
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
        raise TypeError("save_model expects an AmnesiaModel (see mlflow_amnesia.flavor.AmnesiaModel)")
    path = os.path.abspath(path)
    _validate_and_prepare_target_save_path(path)
    data = Path(path, _DATA)
    data.mkdir(parents=True)

    torch.save({k: v.detach().cpu() for k, v in amnesia_model.module.state_dict().items()}, data / _WEIGHTS)
    (data / _ARCH).write_text(json.dumps(amnesia_model.arch, indent=2, sort_keys=True))
    info = dict(amnesia_model.info)
    info["format_version"] = FORMAT_VERSION
    info["segments"] = [s.to_json() for s in amnesia_model.segments]
    (data / _INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
    for k, seg in enumerate(amnesia_model.segments):
        d = data / _SEGMENTS / str(k)
        d.mkdir(parents=True)
        (d / "manifest.json").write_bytes(seg.manifest)
        (d / "record_index.bin").write_bytes(seg.index)
    np.save(data / _ROLLED_BACK, np.asarray(amnesia_model.rolled_back, dtype=np.int64), allow_pickle=False)
    np.save(data / _FORGOTTEN, np.asarray(amnesia_model.forgotten, dtype=np.uint8).reshape(-1, 16), allow_pickle=False)

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
        data=_DATA,
        format_version=FORMAT_VERSION,
        torch_version=str(torch.__version__),
    )
    mlflow.pyfunc.add_to_model(
        mlflow_model,
        loader_module="mlflow_amnesia.flavor",
        data=_DATA,
        conda_env="conda.yaml",
        python_env="python_env.yaml",
    )
    mlflow_model.save(os.path.join(path, "MLmodel"))

    from . import __version__

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
    registered_model_name: Optional[str] = None,
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: Optional[list[str]] = None,
    metadata: Optional[dict] = None,
    params: Optional[dict] = None,
    tags: Optional[dict] = None,
    await_registration_for: int = 300,
):
    """Log ``amnesia_model`` to the active run (MLflow 3 logged model); optionally register it."""
    import mlflow
    import mlflow_amnesia.flavor as this

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


def _read_local(path: Path) -> AmnesiaModel:
    data = path / _DATA if (path / _DATA).is_dir() else path
    if not (data / _INFO).is_file():
        mlmodel = path / "MLmodel"
        hint = ""
        if mlmodel.is_file():
            hint = f" Its MLmodel lists flavors: {_flavors_of(mlmodel)}."
        raise InputError(
            f"{path} is not an mlflow_amnesia model (no {_DATA}/{_INFO}).{hint} "
            "Use a model version registered by `mlflow-amnesia train` or `forget`."
        )
    check_not_purged(data)
    info = json.loads((data / _INFO).read_text())
    fmt = int(info.get("format_version", 0))
    if fmt > FORMAT_VERSION:
        raise InputError(
            f"{data / _INFO} has format version {fmt}; this mlflow-amnesia reads up to {FORMAT_VERSION}. "
            "Upgrade mlflow-amnesia."
        )
    arch = json.loads((data / _ARCH).read_text())
    from .models import build_model

    module = build_model(arch)
    state = torch.load(data / _WEIGHTS, map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    module.eval()
    segments = []
    for k, s in enumerate(info.get("segments", [])):
        d = data / _SEGMENTS / str(k)
        segments.append(
            Segment(
                role=s["role"],
                store_url=s["store_url"],
                first_step=int(s["first_step"]),
                last_step=int(s["last_step"]),
                manifest=(d / "manifest.json").read_bytes(),
                index=(d / "record_index.bin").read_bytes(),
                run_id=s.get("run_id"),
            )
        )
    rolled = np.load(data / _ROLLED_BACK, allow_pickle=False) if (data / _ROLLED_BACK).exists() else np.zeros(0, np.int64)
    forgotten = np.load(data / _FORGOTTEN, allow_pickle=False) if (data / _FORGOTTEN).exists() else np.zeros((0, 16), np.uint8)
    return AmnesiaModel(module=module, arch=arch, info=info, segments=segments, rolled_back=rolled, forgotten=forgotten)


def _flavors_of(mlmodel: Path) -> str:
    import yaml

    try:
        return ", ".join(sorted((yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})))
    except Exception:  # noqa: BLE001 - only for a hint in an error message
        return "unreadable"


def load_model(model_uri: str, dst_path: Optional[str] = None) -> AmnesiaModel:
    """Load a version (``models:/NAME/3``, ``runs:/...``, a local path); reads no delta chunk."""
    import mlflow

    if os.path.isdir(model_uri):
        local = Path(model_uri)
    else:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst_path))
    return _read_local(local)


class _PyFuncWrapper:
    """pyfunc view: ``predict`` on a batch of images returns class probabilities."""

    def __init__(self, model: AmnesiaModel):
        self.model = model

    def get_raw_model(self) -> AmnesiaModel:
        return self.model

    def predict(self, data: Any, params: Optional[dict] = None) -> np.ndarray:
        if hasattr(data, "to_numpy"):
            data = np.stack([np.asarray(v, dtype=np.float32) for v in data.iloc[:, 0]]) if data.shape[1] == 1 else data.to_numpy()
        return self.model.predict_proba(np.asarray(data, dtype=np.float32))


def _load_pyfunc(path: str, model_config: Optional[dict] = None) -> _PyFuncWrapper:
    p = Path(path)
    return _PyFuncWrapper(_read_local(p.parent if p.name == _DATA else p))

