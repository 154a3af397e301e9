"""A recorded phase and a version's reference to one: :class:`Phase` and :class:`Segment`.

A **phase** is one stretch of recorded training (``train``, a repair, a relabel, a retrain...)
and where it keeps its files, under one base URL::

    <base>/deltas/                      the DeltaStore: every step's delta (sealed chunks)
    <base>/training/initial_state.pt    the weights the phase started from (train)
    <base>/training/batch_order.npy     its batch order, one row of record positions per epoch
    <base>/training/optimizer_state.pt  the optimizer's state when it ended (train, retrain)

A **segment** is how a model version refers to a phase: its role, its step range in the
version's global step numbering, its base (hence its store and training files), and the copies
of the store's manifest and of the phase's record index the version carries. One phase can be a
segment of many versions (a forget's child keeps its parent's segments).

Training files are sealed under the record key (:mod:`mlflow_amnesia.crypto`); files in clear
written by versions before sealing are still read, except where the phase wrote sealed files (a
file in clear there was put in place by someone else and is refused).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ManifestFormatError, StoreError
from .fs import url_to_fs, write_url

__all__ = [
    "BATCH_ORDER",
    "INITIAL_STATE",
    "OPTIMIZER_STATE",
    "Phase",
    "Segment",
    "load_array",
    "load_state",
    "read_bytes",
    "save_array",
    "save_state",
]

INITIAL_STATE = "initial_state.pt"
BATCH_ORDER = "batch_order.npy"
OPTIMIZER_STATE = "optimizer_state.pt"
_DELTAS = "deltas"
_TRAINING = "training"
_RESTORE = (
    "restore the file from a copy of the version's artifacts, or train and register the model again "
    "(`mlflow-amnesia train`)"
)


# ---------------------------------------------------------------------------------------------
# sealed training files


def read_bytes(url: str) -> bytes:
    """The bytes at ``url``; InputError naming it when it does not exist."""
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
    write_url(url, _seal(buf.getvalue(), url, key))


def load_state(url: str, *, key: bytes | None = None, sealed: bool = False) -> Any:
    """A state dict written by :func:`save_state` (sealed: needs ``key``; in clear: read as is).

    ``sealed``: the phase wrote its files sealed (its delta store is sealed), so a file in clear
    there was put in place by someone else and is refused, never trusted.
    """
    data = _unseal(read_bytes(url), url, key, sealed)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch signals a damaged file in many ways
        raise InputError(
            f"{url} is damaged ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
            "restore it from a backup of the training run's artifacts."
        ) from None


def save_array(url: str, a: np.ndarray, *, key: bytes | None) -> None:
    """np.save an array (no pickle) to an fsspec URL, sealed under ``key`` (None: in clear)."""
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    write_url(url, _seal(buf.getvalue(), url, key))


def load_array(url: str, *, key: bytes | None = None, sealed: bool = False) -> np.ndarray:
    """An array written by :func:`save_array` (sealed: needs ``key``; in clear: read as is;
    ``sealed`` as in :func:`load_state`)."""
    data = _unseal(read_bytes(url), url, key, sealed)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(
            f"{url} is damaged ({type(e).__name__}: {e}): restore it from a backup of the training run's artifacts."
        ) from None


def _role(url: str) -> str:
    """A training file's role: its name (``initial_state.pt``, ``batch_order.npy``...), bound into its seal."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def _seal(data: bytes, url: str, key: bytes | None) -> bytes:
    from ..crypto import seal_file

    return data if key is None else seal_file(data, key, _role(url))


def _unseal(data: bytes, url: str, key: bytes | None, sealed: bool = False) -> bytes:
    from ..crypto import is_sealed, open_file

    if is_sealed(data):
        return open_file(data, key, _role(url), url)
    if sealed:
        raise StoreError(
            f"{url} is in clear, but this phase's training files were written sealed under the record "
            "key: it was replaced by someone else. Restore it from a backup of the training run's "
            "artifacts; nothing was changed."
        )
    return data


# ---------------------------------------------------------------------------------------------
# a phase: its base URL and what lies under it


@dataclass(frozen=True)
class Phase:
    """Where one recorded phase keeps its files: ``<base>/deltas`` and ``<base>/training/...``."""

    base_url: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", str(self.base_url).rstrip("/"))

    @classmethod
    def of_store_url(cls, store_url: str) -> Phase | None:
        """The phase whose store is ``<base>/deltas``; None for a store at another URL (one a
        library user created by hand: it has no training files of ours)."""
        url = str(store_url).rstrip("/")
        return cls(url[: -len(_DELTAS) - 1]) if url.endswith("/" + _DELTAS) else None

    @classmethod
    def of_training_url(cls, training_url: str) -> Phase:
        """The phase whose training files are at ``training_url`` (``<base>/training``, as a
        version's ``training_url`` records it)."""
        url = str(training_url).rstrip("/")
        return cls(url[: -len(_TRAINING) - 1] if url.endswith("/" + _TRAINING) else url)

    @property
    def deltas_url(self) -> str:
        """The URL of the phase's DeltaStore."""
        return f"{self.base_url}/{_DELTAS}"

    @property
    def training_url(self) -> str:
        """The URL of the folder of the phase's training files."""
        return f"{self.base_url}/{_TRAINING}"

    def file_url(self, name: str) -> str:
        """The URL of one training file (:data:`INITIAL_STATE`, :data:`BATCH_ORDER`, :data:`OPTIMIZER_STATE`)."""
        if name not in (INITIAL_STATE, BATCH_ORDER, OPTIMIZER_STATE):
            raise InputError(
                f"{name!r} is not a training file of a phase ({INITIAL_STATE}, {BATCH_ORDER}, {OPTIMIZER_STATE})"
            )
        return f"{self.training_url}/{name}"

    def save_initial_state(self, state: Any, *, key: bytes | None) -> None:
        """Keep the weights the phase starts from, sealed under ``key``."""
        save_state(self.file_url(INITIAL_STATE), state, key=key)

    def load_initial_state(self, *, key: bytes | None = None, sealed: bool = False) -> Any:
        return load_state(self.file_url(INITIAL_STATE), key=key, sealed=sealed)

    def save_batch_order(self, order: np.ndarray, *, key: bytes | None) -> None:
        """Keep the phase's batch order (one row of record positions per epoch), sealed under ``key``."""
        save_array(self.file_url(BATCH_ORDER), order, key=key)

    def load_batch_order(self, *, key: bytes | None = None, sealed: bool = False) -> np.ndarray:
        return load_array(self.file_url(BATCH_ORDER), key=key, sealed=sealed)

    def save_optimizer_state(self, state: Any, *, key: bytes | None) -> None:
        """Keep the optimizer's final state (momentum buffers), sealed under ``key``."""
        save_state(self.file_url(OPTIMIZER_STATE), state, key=key)


# ---------------------------------------------------------------------------------------------
# a segment: a version's reference to a recorded phase


@dataclass
class Segment:
    """One recorded phase of a model version: its delta store (by URL), its step range and record index.

    ``base_url`` is the phase's base (:class:`Phase`); versions written before it was recorded
    derive it from ``store_url`` when they are read (:meth:`from_json`), once.
    """

    role: str  # "train" | "repair" | "retrain" | ...
    store_url: str
    first_step: int
    last_step: int  # inclusive; last_step < first_step when the phase recorded nothing
    manifest: bytes = b""
    index: bytes = b""
    run_id: str | None = None
    #: how errors name the manifest and index copies (set by the loader: the version's files)
    names: tuple[str, str] = field(default=("", ""), compare=False, repr=False)
    base_url: str | None = None

    def __post_init__(self) -> None:
        if self.base_url is None:
            phase = Phase.of_store_url(self.store_url)
            self.base_url = phase.base_url if phase is not None else None

    def to_json(self) -> dict:
        out = {
            "role": self.role,
            "store_url": self.store_url,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "run_id": self.run_id,
        }
        if self.base_url is not None:
            out["base_url"] = self.base_url
        return out

    @classmethod
    def from_json(
        cls, d: dict, *, manifest: bytes = b"", index: bytes = b"", names: tuple[str, str] = ("", "")
    ) -> Segment:
        """A segment from its entry of ``data/amnesia.json`` (checked by the version's reader)."""
        return cls(
            role=d["role"],
            store_url=d["store_url"],
            first_step=d["first_step"],
            last_step=d["last_step"],
            manifest=manifest,
            index=index,
            run_id=d.get("run_id"),
            names=names,
            base_url=d.get("base_url"),
        )

    def __getitem__(self, key: str) -> Any:
        """Read access by the JSON key (``seg["store_url"]``), for code written against the dicts."""
        return self.to_json()[key] if key != "base_url" else self.base_url

    @property
    def phase(self) -> Phase | None:
        """Where the phase keeps its files; None for a store a library user put elsewhere."""
        return Phase(self.base_url) if self.base_url is not None else None

    def holds(self, steps: np.ndarray) -> np.ndarray:
        return (steps >= self.first_step) & (steps <= self.last_step)

    @property
    def n_steps(self) -> int:
        return max(0, self.last_step - self.first_step + 1)

    def open_store(self, key: bytes | None = None):
        """The segment's DeltaStore, read through the manifest copied into the version.

        Its deltas are sealed under the record ``key``: reading them needs it; listing steps,
        sizes and ``verify`` (size and digest) do not. A store of an older version (in clear)
        reads without it.
        """
        from .store import DeltaStore

        try:
            return DeltaStore.open(self.store_url, manifest=self.manifest, key=key)
        except ManifestFormatError as e:
            if not self.names[0]:
                raise
            raise ManifestFormatError(
                f"{self.names[0]} (the version's copy of the store's manifest): {e}; {_RESTORE}"
            ) from None

    def open_index(self, key: bytes):
        """The segment's RecordIndex; one that lists other steps than the segment is refused."""
        from .index import RecordIndex

        return RecordIndex.from_bytes(
            self.index,
            key,
            name=self.names[1] or f"record index of the {self.role} segment",
            steps=(self.first_step, self.last_step),
        )
