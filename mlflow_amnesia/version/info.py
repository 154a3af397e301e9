"""The metadata of a model version (``data/amnesia.json``), typed: :class:`VersionInfo`.

What a version was trained on and how (data spec, split, recipe, codec, architecture's input
and classes, the record key's id), where its training phase keeps its files, its lineage
(``history``) and its recorded phases (``segments``). :meth:`VersionInfo.parse` checks every
field that loading, forget, records, audit and purge read, before anything uses it, and names
the file in each error; keys this release does not know are kept and written back unchanged.

``info["codec"]``-style access still works (a read-only view by JSON key), for code written
against the plain dict this used to be.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import InputError
from ..recording.phase import Phase, Segment

__all__ = ["FORMAT_VERSION", "MAX_INFO_BYTES", "VersionInfo", "damaged", "text"]

#: The flavor's format version: a version of a newer one is refused with "upgrade".
FORMAT_VERSION = 1
#: amnesia.json holds a few KB (history grows by ~200 B a forget): a bigger one is not ours.
MAX_INFO_BYTES = 64 << 20
_MAX_EPOCHS = 1_000_000  # a recipe's epochs: orders of epochs x records are allocated from it
RESTORE = (
    "restore the file from a copy of the version's artifacts, or train and register the model again "
    "(`mlflow-amnesia train`)"
)


def text(v: Any, limit: int = 200) -> str:
    """``v`` as one short line (values read from a file go into one-line error messages)."""
    t = "".join(c if c.isprintable() else " " for c in str(v))
    return t if len(t) <= limit else t[:limit] + "..."


def damaged(where: str, what: str) -> InputError:
    """The error for a version's file that is not what mlflow-amnesia wrote."""
    return InputError(f"{where} {what}: the file is damaged or was not written by mlflow-amnesia; {RESTORE}.")


def json_object(raw: bytes, where: str) -> dict:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError; RecursionError: absurd nesting
        raise damaged(where, f"is not valid JSON ({text(type(e).__name__ + ': ' + str(e), 120)})") from None
    if not isinstance(obj, dict):
        raise damaged(where, f"is not a JSON object (it holds a {type(obj).__name__})")
    return obj


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _check_fields(d: Any, where: str, what: str, checks: dict) -> None:
    """Each key of ``checks`` present in ``d`` must pass its check (a predicate, with a phrase)."""
    if not isinstance(d, dict):
        raise damaged(where, f"{what} is a {type(d).__name__}, not an object")
    for key, (ok, phrase) in checks.items():
        if key in d and not ok(d[key]):
            raise damaged(where, f"{what}{key} is {text(repr(d[key]), 80)}, not {phrase}")


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
    "input_shape": (
        lambda v: isinstance(v, list) and 0 < len(v) <= 8 and all(_is_int(x) and 1 <= x <= 2**20 for x in v),
        "a list of up to 8 integers in 1..2**20 (channels, height, width)",
    ),
    "num_classes": (lambda v: _is_int(v) and 1 <= v <= 2**31, "an integer in 1..2**31"),
    "classes": (_list_of(lambda x: isinstance(x, str)), "a list of class names"),
    "codec": _STR,
    "key_id": _OPT_STR,
    "model_name": _OPT_STR,
    "training_url": _OPT_STR,
    "store_uri": _OPT_STR,
    "order": _OPT_STR,
    "history": (_list_of(lambda x: isinstance(x, dict)), "a list of objects"),
    "dataset": (lambda v: isinstance(v, dict), "an object"),
    "split": (lambda v: isinstance(v, dict), "an object"),
    "recipe": (lambda v: isinstance(v, dict), "an object"),
    "segments": (lambda v: isinstance(v, list), "a list"),
}
_DATASET_FIELDS = {
    "format": _INT,
    "spec": _STR,
    "root": _OPT_STR,
    "fingerprint": _STR,
    "n_records": _COUNT,
    "shape": (_list_of(_is_int), "a list of integers"),
    "classes": (_list_of(lambda x: isinstance(x, str)), "a list of names"),
    "normalization": (
        lambda v: (
            isinstance(v, dict)
            and _is_number(v.get("scale"))
            and v["scale"] > 0
            and _NUMBERS[0](v.get("mean"))
            and _NUMBERS[0](v.get("std"))
            and len(v["mean"]) <= 4096
        ),
        "an object with a scale > 0 and lists mean and std of numbers",
    ),
    "parts": (
        _list_of(lambda x: isinstance(x, dict) and _is_int(x.get("start")) and _is_int(x.get("stop"))),
        "a list of parts",
    ),
    "predefined_split": (_opt(lambda v: isinstance(v, dict)), "an object or null"),
}
_SPLIT_FIELDS = {
    "format": _INT,
    "method": _STR,
    "fingerprint": _STR,
    "seed": _INT,
    "holdout_fraction": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "stratify": (lambda v: isinstance(v, bool), "true or false"),
    "checksum": _STR,
    "n_train": _COUNT,
    "n_holdout": _COUNT,
}
_RECIPE_FIELDS = {
    "epochs": (lambda v: _is_int(v) and 1 <= v <= _MAX_EPOCHS, f"an integer in 1..{_MAX_EPOCHS:,}"),
    "batch_size": (lambda v: _is_int(v) and 1 <= v <= 2**31, "an integer in 1..2**31"),
    "lr": _NUMBER,
    "momentum": _NUMBER,
    "weight_decay": _NUMBER,
    "seed": _INT,
}
_SEGMENT_FIELDS = {
    "role": (lambda v: isinstance(v, str) and 0 < len(v) <= 64 and v.isprintable(), "a short name"),
    "store_url": (lambda v: isinstance(v, str) and v.strip() != "" and v.isprintable(), "a URL"),
    "first_step": (lambda v: _is_int(v) and 0 <= v < 2**62, "an integer in 0..2**62"),
    "last_step": (lambda v: _is_int(v) and -1 <= v < 2**62, "an integer in -1..2**62"),
    "run_id": _OPT_STR,
    "base_url": (_opt(lambda v: isinstance(v, str) and v.strip() != "" and v.isprintable()), "a URL or null"),
}


#: Fields every release wrote, even when null (the others only when set).
_ALWAYS = ("key_id", "model_name", "training_url", "store_uri")


@dataclass(eq=False)
class VersionInfo(Mapping):
    """``data/amnesia.json`` of a version: typed fields, plus ``extra`` for keys this release does not know."""

    dataset: dict[str, Any] | None = None  # the data spec (mlflow_amnesia.learning.data: rebuild)
    split: dict[str, Any] | None = None  # the train/holdout split (Split.to_dict)
    recipe: dict[str, Any] | None = None  # the training recipe (Recipe.to_dict)
    codec: str | None = None  # the delta codec of every recorded phase of the version
    input_shape: list[int] | None = None
    num_classes: int | None = None
    classes: list[str] | None = None
    model_name: str | None = None
    key_id: str | None = None  # the id of the record key its indexes and seals are made with
    training_url: str | None = None  # <base>/training of the train phase (initial state, batch order)
    order: str | None = None  # the batch-order scheme of the train phase (data.ORDER_KEYED); None: public-v1
    store_uri: str | None = None  # --store-uri of train: where later phases record too
    history: list[dict[str, Any]] = field(default_factory=list)  # train, then one entry per forget
    segments: list[Segment] = field(default_factory=list)  # the recorded phases (no manifest or index bytes)
    format_version: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # -- JSON

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> VersionInfo:
        """From the JSON object (unchecked: :meth:`parse` checks); unknown keys go to ``extra``."""
        if isinstance(d, VersionInfo):
            return d.copy()
        known = {f.name for f in fields(cls)} - {"extra", "segments"}
        kw: dict[str, Any] = {k: d[k] for k in known if k in d}
        kw["segments"] = [s if isinstance(s, Segment) else Segment.from_json(s) for s in d.get("segments", [])]
        kw["extra"] = {k: v for k, v in d.items() if k not in known and k != "segments"}
        return cls(**kw)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``data/amnesia.json`` (``extra`` included, as it was read)."""
        out: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name in ("extra", "segments"):
                continue
            v = getattr(self, f.name)
            if v is not None or f.name in _ALWAYS:
                out[f.name] = v
        out["segments"] = [s.to_json() for s in self.segments]
        return out

    def copy(self) -> VersionInfo:
        """A deep copy (a forget's child changes its copy only)."""
        return VersionInfo.from_json(json.loads(json.dumps(self.to_json())))

    @classmethod
    def parse(cls, raw: bytes, where: str) -> VersionInfo:
        """``data/amnesia.json``, checked: format version first (a newer one says upgrade), then the
        type and range of every field that loading, forget, records, audit and purge read."""
        return cls.from_json(check_info(raw, where))

    # -- typed views

    @property
    def training_phase(self) -> Phase | None:
        """The phase ``train`` recorded (its initial state and batch order), when the version says."""
        return Phase.of_training_url(self.training_url) if self.training_url else None

    @property
    def phase_codec(self) -> str:
        """The codec every recorded phase of the version uses (a later phase records with it too)."""
        if not self.codec:
            raise InputError(
                "this model version records no codec (data/amnesia.json has no 'codec'), so no "
                "phase can be recorded for it: train it again with `mlflow-amnesia train`"
            )
        return self.codec

    @property
    def last_request(self) -> dict[str, Any]:
        """The history entry of the job that made this version (``{}`` when there is none)."""
        return (self.history or [{}])[-1]

    # -- read access by JSON key: info["codec"], info.get("key_id")

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())

    def __setitem__(self, key: str, value: Any) -> None:
        """Set a field by its JSON key (kept for code written against the dict)."""
        if key == "segments":
            self.segments = [s if isinstance(s, Segment) else Segment.from_json(s) for s in value]
        elif key in {f.name for f in fields(self)} - {"extra"}:
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, VersionInfo):
            return self.to_json() == other.to_json()
        if isinstance(other, Mapping):
            return self.to_json() == dict(other)
        return NotImplemented


def check_info(raw: bytes, where: str) -> dict[str, Any]:
    """The checks of :meth:`VersionInfo.parse`; returns the JSON object."""
    if len(raw) > MAX_INFO_BYTES:
        raise damaged(where, f"is {len(raw):,} bytes, more than the {MAX_INFO_BYTES:,} such a file can hold")
    info = json_object(raw, where)
    fmt = info.get("format_version", 0)
    if not _is_int(fmt) or fmt < 0:
        raise damaged(where, f"has format_version {text(repr(fmt), 40)}, not an integer")
    if fmt > FORMAT_VERSION:
        raise InputError(
            f"{where} has format version {fmt}; this mlflow-amnesia reads up to {FORMAT_VERSION}. "
            "Upgrade mlflow-amnesia."
        )
    for key in ("input_shape", "num_classes"):
        if key not in info:
            raise damaged(where, f"has no {key}")
    _check_fields(info, where, "", _INFO_FIELDS)
    _check_fields(info.get("dataset", {}), where, "dataset.", _DATASET_FIELDS)
    _check_fields(info.get("split", {}), where, "split.", _SPLIT_FIELDS)
    _check_fields(info.get("recipe", {}), where, "recipe.", _RECIPE_FIELDS)
    spans = []
    for k, seg in enumerate(info.get("segments", [])):
        _check_fields(seg, where, f"segment {k} ", _SEGMENT_FIELDS)
        for key in ("role", "store_url", "first_step", "last_step"):
            if key not in seg:
                raise damaged(where, f"segment {k} has no {key}")
        if seg["last_step"] < seg["first_step"] - 1:
            raise damaged(
                where, f"segment {k} has last_step {seg['last_step']} before its first_step {seg['first_step']} - 1"
            )
        if seg["last_step"] >= seg["first_step"]:
            spans.append((seg["first_step"], seg["last_step"], k))
    spans.sort()
    for (a0, a1, ka), (b0, b1, kb) in zip(spans, spans[1:]):
        if b0 <= a1:
            raise damaged(
                where,
                f"segments {ka} (steps {a0}..{a1}) and {kb} (steps {b0}..{b1}) overlap "
                "(step numbers are unique across a version)",
            )
    return info
