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

Loading trusts none of these files: each is parsed by one function here (``read_info``,
``read_arch``, ``read_weights``, ``read_rolled_back``, ``read_forgotten``, ``read_tombstone``;
``purge`` reads through the same ones) that checks types, ranges and sizes before allocating and
raises an :class:`~mlflow_amnesia.errors.AmnesiaError` naming the version's file. No code an
artifact names is imported (see :func:`mlflow_amnesia.models.check_builder`), nothing is unpickled.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch

from .errors import IndexFormatError, InputError, ManifestFormatError, PurgedVersionError  # noqa: F401 - re-exported
from .keys import HASH_BYTES, hash_rows, no_hashes

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
_MAX_JSON = 64 << 20  # amnesia.json holds a few KB (history grows by ~200 B a forget): a bigger one is not ours
_MAX_SMALL_JSON = 1 << 20  # arch.json, purged.json
_MAX_EPOCHS = 1_000_000  # a recipe's epochs: orders of epochs x records are allocated from it
_RESTORE = ("restore the file from a copy of the version's artifacts, or train and register the model again "
            "(`mlflow-amnesia train`)")


def _text(v: Any, limit: int = 200) -> str:
    """``v`` as one short line (values read from a file go into one-line error messages)."""
    t = "".join(c if c.isprintable() else " " for c in str(v))
    return t if len(t) <= limit else t[:limit] + "..."


def read_tombstone(raw: bytes) -> dict:
    """The purge tombstone's fields (a dict, empty when unreadable): only ever shown in a message."""
    if len(raw) > _MAX_SMALL_JSON:
        return {}
    try:
        t = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return t if isinstance(t, dict) else {}


def check_not_purged(data: Path) -> None:
    """Raise :class:`PurgedVersionError` if ``data`` (a version's ``data/`` dir) holds a purge tombstone."""
    tomb = data / TOMBSTONE
    if not tomb.is_file():
        return
    try:
        t = read_tombstone(tomb.read_bytes()) if tomb.stat().st_size <= _MAX_SMALL_JSON else {}
    except OSError:
        t = {}
    name = _text(t.get("model_name") or "this model", 100)
    version = t.get("version") if isinstance(t.get("version"), int) and not isinstance(t.get("version"), bool) else None
    who = f"{name} v{version if version is not None else '?'}"
    when = (_text(t["completed_at"], 40) if t.get("completed_at") else
            f"started {_text(t.get('started_at', '?'), 40)} and not finished: re-run `mlflow-amnesia purge "
            f"--model {name if t.get('model_name') else 'NAME'} --version {version if version is not None else 'N'}` to finish it")
    sup = t.get("superseded_by")
    ok = isinstance(sup, int) and not isinstance(sup, bool)
    instead = f"load v{sup} (which forgot the records) or a later version" if ok else "load a later version"
    raise PurgedVersionError(
        f"{who} was purged ({when}): its weights were deleted for good because a later version forgot records "
        f"it held, so it cannot be loaded ({_text(tomb, 400)}). Its lineage metadata is kept; {instead}."
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
    #: how errors name the manifest and index copies (set by the loader: the version's files)
    names: tuple[str, str] = field(default=("", ""), compare=False, repr=False)

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

        try:
            return DeltaStore.open(self.store_url, manifest=self.manifest, key=key)
        except ManifestFormatError as e:
            if not self.names[0]:
                raise
            raise ManifestFormatError(f"{self.names[0]} (the version's copy of the store's manifest): {e}; "
                                      f"{_RESTORE}") from None

    def open_index(self, key: bytes):
        """The segment's RecordIndex; one that lists other steps than the segment is refused."""
        from .index import RecordIndex

        return RecordIndex.from_bytes(self.index, key, name=self.names[1] or f"record index of the {self.role} segment",
                                      steps=(self.first_step, self.last_step))


@dataclass
class AmnesiaModel:
    """A loaded version: the torch module plus what a forget or an audit needs."""

    module: torch.nn.Module
    arch: dict
    info: dict
    segments: list[Segment]
    rolled_back: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    forgotten: np.ndarray = field(default_factory=no_hashes)

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
    np.save(data / _FORGOTTEN, hash_rows(amnesia_model.forgotten), allow_pickle=False)

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


# ---------------------------------------------------------------------------------------------
# reading a version's files: every one checked, named in errors, bounded before allocating


def _damaged(where: str, what: str) -> InputError:
    return InputError(f"{where} {what}: the file is damaged or was not written by mlflow-amnesia; {_RESTORE}.")


def _read_bytes(path: Path, where: str, limit: Optional[int] = None) -> bytes:
    try:
        size = path.stat().st_size
        if limit is not None and size > limit:
            raise _damaged(where, f"is {size:,} bytes, more than the {limit:,} such a file can hold")
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{where} is missing: the version's artifacts are incomplete; {_RESTORE}.") from None
    except IsADirectoryError:
        raise _damaged(where, "is a directory") from None
    except OSError as e:
        raise InputError(f"cannot read {where}: {e.strerror or e}") from None


def _json_object(raw: bytes, where: str) -> dict:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError; RecursionError: absurd nesting
        raise _damaged(where, f"is not valid JSON ({_text(type(e).__name__ + ': ' + str(e), 120)})") from None
    if not isinstance(obj, dict):
        raise _damaged(where, f"is not a JSON object (it holds a {type(obj).__name__})")
    return obj


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _check_fields(d: Any, where: str, what: str, checks: dict) -> None:
    """Each key of ``checks`` present in ``d`` must pass its check (a predicate, with a phrase)."""
    if not isinstance(d, dict):
        raise _damaged(where, f"{what} is a {type(d).__name__}, not an object")
    for key, (ok, phrase) in checks.items():
        if key in d and not ok(d[key]):
            raise _damaged(where, f"{what}{key} is {_text(repr(d[key]), 80)}, not {phrase}")


def _list_of(pred) -> Any:
    return lambda v: isinstance(v, list) and all(pred(x) for x in v)


def _opt(pred) -> Any:
    return lambda v: v is None or pred(v)


_STR = (lambda v: isinstance(v, str), "text")
_OPT_STR = (_opt(lambda v: isinstance(v, str)), "text or null")
_INT = (_is_int, "an integer")
_COUNT = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
_NUMBER = (_is_number, "a finite number")
_NUMBERS = (_list_of(_is_number), "a list of finite numbers")
_INFO_FIELDS = {
    "input_shape": (lambda v: isinstance(v, list) and 0 < len(v) <= 8 and all(_is_int(x) and 1 <= x <= 2**20 for x in v),
                    "a list of up to 8 integers in 1..2**20 (channels, height, width)"),
    "num_classes": (lambda v: _is_int(v) and 1 <= v <= 2**31, "an integer in 1..2**31"),
    "classes": (_list_of(lambda x: isinstance(x, str)), "a list of class names"),
    "codec": _STR, "key_id": _OPT_STR, "model_name": _OPT_STR, "training_url": _OPT_STR, "store_uri": _OPT_STR,
    "history": (_list_of(lambda x: isinstance(x, dict)), "a list of objects"),
    "dataset": (lambda v: isinstance(v, dict), "an object"),
    "split": (lambda v: isinstance(v, dict), "an object"),
    "recipe": (lambda v: isinstance(v, dict), "an object"),
    "segments": (lambda v: isinstance(v, list), "a list"),
}
_DATASET_FIELDS = {
    "format": _INT, "spec": _STR, "root": _OPT_STR, "fingerprint": _STR, "n_records": _COUNT,
    "shape": (_list_of(_is_int), "a list of integers"), "classes": (_list_of(lambda x: isinstance(x, str)), "a list of names"),
    "normalization": (lambda v: isinstance(v, dict) and _is_number(v.get("scale")) and v["scale"] > 0
                      and _NUMBERS[0](v.get("mean")) and _NUMBERS[0](v.get("std")) and len(v["mean"]) <= 4096,
                      "an object with a scale > 0 and lists mean and std of numbers"),
    "parts": (_list_of(lambda x: isinstance(x, dict) and _is_int(x.get("start")) and _is_int(x.get("stop"))), "a list of parts"),
    "predefined_split": (_opt(lambda v: isinstance(v, dict)), "an object or null"),
}
_SPLIT_FIELDS = {
    "format": _INT, "method": _STR, "fingerprint": _STR, "seed": _INT, "holdout_fraction": (
        lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"), "stratify": (lambda v: isinstance(v, bool), "true or false"),
    "checksum": _STR, "n_train": _COUNT, "n_holdout": _COUNT,
}
_RECIPE_FIELDS = {
    "epochs": (lambda v: _is_int(v) and 1 <= v <= _MAX_EPOCHS, f"an integer in 1..{_MAX_EPOCHS:,}"),
    "batch_size": (lambda v: _is_int(v) and 1 <= v <= 2**31, "an integer in 1..2**31"),
    "lr": _NUMBER, "momentum": _NUMBER, "weight_decay": _NUMBER, "seed": _INT,
}
_SEGMENT_FIELDS = {
    "role": (lambda v: isinstance(v, str) and 0 < len(v) <= 64 and v.isprintable(), "a short name"),
    "store_url": (lambda v: isinstance(v, str) and v.strip() != "" and v.isprintable(), "a URL"),
    "first_step": (lambda v: _is_int(v) and 0 <= v < 2**62, "an integer in 0..2**62"),
    "last_step": (lambda v: _is_int(v) and -1 <= v < 2**62, "an integer in -1..2**62"),
    "run_id": _OPT_STR,
}


def read_info(raw: bytes, where: str) -> dict:
    """``data/amnesia.json``, checked: format version first (a newer one says upgrade), then the
    type and range of every field that loading, forget, records, audit and purge read."""
    if len(raw) > _MAX_JSON:
        raise _damaged(where, f"is {len(raw):,} bytes, more than the {_MAX_JSON:,} such a file can hold")
    info = _json_object(raw, where)
    fmt = info.get("format_version", 0)
    if not _is_int(fmt) or fmt < 0:
        raise _damaged(where, f"has format_version {_text(repr(fmt), 40)}, not an integer")
    if fmt > FORMAT_VERSION:
        raise InputError(
            f"{where} has format version {fmt}; this mlflow-amnesia reads up to {FORMAT_VERSION}. "
            "Upgrade mlflow-amnesia."
        )
    for key in ("input_shape", "num_classes"):
        if key not in info:
            raise _damaged(where, f"has no {key}")
    _check_fields(info, where, "", _INFO_FIELDS)
    _check_fields(info.get("dataset", {}), where, "dataset.", _DATASET_FIELDS)
    _check_fields(info.get("split", {}), where, "split.", _SPLIT_FIELDS)
    _check_fields(info.get("recipe", {}), where, "recipe.", _RECIPE_FIELDS)
    spans = []
    for k, seg in enumerate(info.get("segments", [])):
        _check_fields(seg, where, f"segment {k} ", _SEGMENT_FIELDS)
        for key in ("role", "store_url", "first_step", "last_step"):
            if key not in seg:
                raise _damaged(where, f"segment {k} has no {key}")
        if seg["last_step"] < seg["first_step"] - 1:
            raise _damaged(where, f"segment {k} has last_step {seg['last_step']} before its first_step {seg['first_step']} - 1")
        if seg["last_step"] >= seg["first_step"]:
            spans.append((seg["first_step"], seg["last_step"], k))
    spans.sort()
    for (a0, a1, ka), (b0, b1, kb) in zip(spans, spans[1:]):
        if b0 <= a1:
            raise _damaged(where, f"segments {ka} (steps {a0}..{a1}) and {kb} (steps {b0}..{b1}) overlap "
                                  "(step numbers are unique across a version)")
    return info


def read_arch(raw: bytes, where: str, builders: Iterable[str] = ()) -> dict:
    """``data/arch.json``, checked as a spec; a builder it names must be allowed (nothing imported)."""
    from .models import check_builder, validate_spec

    try:
        spec = validate_spec(_json_object(raw, where))
    except InputError as e:
        if str(e).startswith(where):
            raise
        raise InputError(f"{where}: {e} The file is damaged or was not written by mlflow-amnesia; {_RESTORE}.") from None
    check_builder(spec, source=where, builders=builders)
    return spec


def read_weights(path: Path, where: str) -> dict[str, torch.Tensor]:
    """``data/weights.pt``: a torch zip of uncompressed entries (so nothing inflates past the
    file), read with ``weights_only=True``; must hold a state dict of tensors."""
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as z:
            entries = z.infolist()
    except FileNotFoundError:
        raise InputError(f"{where} is missing: the version's artifacts are incomplete; {_RESTORE}.") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise _damaged(where, f"is not a readable torch.save file, truncated or overwritten ({_text(e, 80)})") from None
    if any(e.compress_type != zipfile.ZIP_STORED or e.file_size != e.compress_size for e in entries) or \
            sum(e.file_size for e in entries) > size:
        raise _damaged(where, "holds compressed or oversized entries, which torch.save never writes")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch signals a damaged file in many ways; weights_only refuses any pickle
        raise _damaged(where, f"cannot be read ({type(e).__name__}: {_text(str(e).splitlines()[0] if str(e) else '', 120)})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise _damaged(where, "does not hold a state dict (names to tensors)")
    return state


def _read_npy(raw: bytes, where: str, kind: str, itemsize: int) -> tuple[np.ndarray, tuple]:
    """A .npy of one plain dtype, its header checked against the file before anything is read."""
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"npy format version {version}")
    except (ValueError, EOFError, SyntaxError, TypeError, OverflowError) as e:
        raise _damaged(where, f"is not a readable .npy file ({_text(e, 80)})") from None
    want = f"{'int' if kind == 'i' else 'uint'}{8 * itemsize}"
    if dtype.hasobject or dtype.fields is not None or dtype.kind != kind or dtype.itemsize != itemsize:
        raise _damaged(where, f"holds {dtype} values, not {want}")
    need = math.prod(shape) * itemsize
    have = len(raw) - f.tell()
    if have != need:
        raise _damaged(where, f"is truncated or padded: its header says {tuple(shape)} {want} ({need:,} bytes), "
                              f"the file holds {have:,}")
    a = np.frombuffer(raw, dtype=dtype, offset=f.tell()).reshape(shape, order="F" if fortran else "C")
    return a.astype(dtype.newbyteorder("="), copy=True), tuple(shape)


def read_rolled_back(raw: Optional[bytes], where: str, segments: Iterable[Any]) -> np.ndarray:
    """``data/rolled_back.npy``: 1-D int64, strictly increasing, each a step of ``segments``
    (:class:`Segment` or their JSON dicts). None (no file): nothing rolled back."""
    if raw is None:
        return np.zeros(0, np.int64)
    a, shape = _read_npy(raw, where, "i", 8)
    if len(shape) != 1:
        raise _damaged(where, f"holds a {len(shape)}-dimensional array {shape}, not a 1-D list of steps")
    a = a.astype(np.int64, copy=False)
    if len(a) > 1 and not (np.diff(a) > 0).all():
        raise _damaged(where, "does not list steps strictly increasing (each step is rolled back once)")
    spans = [(s.first_step, s.last_step) if isinstance(s, Segment) else (s["first_step"], s["last_step"]) for s in segments]
    known = np.zeros(len(a), dtype=bool)
    for lo, hi in spans:
        known |= (a >= lo) & (a <= hi)
    if not known.all():
        bad = int(a[~known][0])
        held = ", ".join(f"{lo}..{hi}" for lo, hi in spans if hi >= lo) or "none"
        raise _damaged(where, f"lists {int((~known).sum())} step(s) that are not steps of the version's segments "
                              f"(e.g. {bad}; the segments hold steps {held})")
    return a


def read_forgotten(raw: Optional[bytes], where: str) -> np.ndarray:
    """``data/forgotten.npy``: ``(n, 16)`` uint8 keyed hashes. None (no file): nothing forgotten."""
    if raw is None:
        return no_hashes()
    a, shape = _read_npy(raw, where, "u", 1)
    if len(shape) != 2 or shape[1] != HASH_BYTES:
        raise _damaged(where, f"holds uint8 of shape {shape}, not (n, {HASH_BYTES}) keyed record hashes")
    return a


def _read_local(path: Path, label: Optional[str] = None, builders: Iterable[str] = ()) -> AmnesiaModel:
    """Load the version in the local directory ``path``; ``label`` names it in errors (its URI)."""
    from .index import index_counts
    from .models import build_model, state_shapes

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
    label = label or str(path)

    def where(name: str) -> str:
        return f"{_DATA}/{name} of {label}"

    info = read_info(_read_bytes(data / _INFO, where(_INFO), _MAX_JSON), where(_INFO))
    arch = read_arch(_read_bytes(data / _ARCH, where(_ARCH), _MAX_SMALL_JSON), where(_ARCH), builders)
    segments = []
    for k, s in enumerate(info.get("segments", [])):
        d = f"{_SEGMENTS}/{k}"
        names = (where(f"{d}/manifest.json"), where(f"{d}/record_index.bin"))
        seg = Segment(role=s["role"], store_url=s["store_url"], first_step=s["first_step"], last_step=s["last_step"],
                      manifest=_read_bytes(data / d / "manifest.json", names[0]),
                      index=_read_bytes(data / d / "record_index.bin", names[1]), run_id=s.get("run_id"), names=names)
        # the header alone bounds the segment: its steps are the index's (a forged range fails here)
        try:
            n_steps = index_counts(seg.index, name=names[1], steps=(seg.first_step, seg.last_step))[1]
        except IndexFormatError as e:
            raise IndexFormatError(str(e) if "restore" in str(e) else f"{str(e).rstrip('.')}; {_RESTORE}.") from None
        if n_steps != seg.n_steps:
            raise IndexFormatError(
                f"the record index {names[1]} lists {n_steps} steps, but {where(_INFO)} gives its segment {seg.n_steps} "
                f"(steps {seg.first_step}..{seg.last_step}): the files do not belong together; {_RESTORE}."
            )
        segments.append(seg)
    rolled = read_rolled_back(_read_bytes(data / _ROLLED_BACK, where(_ROLLED_BACK)) if (data / _ROLLED_BACK).exists() else None,
                              where(_ROLLED_BACK), segments)
    forgotten = read_forgotten(_read_bytes(data / _FORGOTTEN, where(_FORGOTTEN)) if (data / _FORGOTTEN).exists() else None,
                               where(_FORGOTTEN))
    state = read_weights(data / _WEIGHTS, where(_WEIGHTS))
    shapes = state_shapes(arch)  # a built-in architecture: check the weights fit before building it
    got = {k: tuple(v.shape) for k, v in state.items()}
    if shapes is not None and shapes != got:
        odd = sorted(set(shapes) ^ set(got))
        first = (f"{_text(odd[0], 80)} is only in {'the weights' if odd[0] in got else 'the architecture'}" if odd else
                 next(f"{_text(k, 80)} is {got[k]} in the weights, {shapes[k]} in the architecture"
                      for k in sorted(shapes) if shapes[k] != got[k]))
        raise InputError(f"{where(_WEIGHTS)} does not fit {_DATA}/{_ARCH} ({len(got)} tensors, the architecture has "
                         f"{len(shapes)}; {first}): one of the files is not this version's; {_RESTORE}.")
    module = build_model(arch, source=where(_ARCH), builders=builders)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:  # a builder's module (shapes unknown until built)
        raise InputError(f"{where(_WEIGHTS)} does not fit {_DATA}/{_ARCH} ({_text(str(e).splitlines()[-1], 160)}); "
                         f"{_RESTORE}.") from None
    module.eval()
    return AmnesiaModel(module=module, arch=arch, info=info, segments=segments, rolled_back=rolled, forgotten=forgotten)


def _flavors_of(mlmodel: Path) -> str:
    import yaml

    try:
        if mlmodel.stat().st_size > _MAX_SMALL_JSON:
            return "unreadable"
        return _text(", ".join(sorted(map(str, (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})))))
    except Exception:  # noqa: BLE001 - only for a hint in an error message
        return "unreadable"


def load_model(model_uri: str, dst_path: Optional[str] = None, *, builders: Iterable[str] = ()) -> AmnesiaModel:
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
    return _read_local(local, label=model_uri, builders=builders)


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
    # Builders are allowed by MLFLOW_AMNESIA_ALLOWED_BUILDERS only, never by model_config, which
    # MLflow may fill from the MLmodel file: an artifact must not allow its own code.
    p = Path(path)
    return _PyFuncWrapper(_read_local(p.parent if p.name == _DATA else p))

