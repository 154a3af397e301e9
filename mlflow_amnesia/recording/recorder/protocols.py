"""What the Recorder needs from its collaborators: a sink for deltas and one for batches.

:class:`~mlflow_amnesia.recording.store.DeltaStore` and :class:`~mlflow_amnesia.recording.index.RecordIndexBuilder`
are the implementations; tests and users may pass anything with these methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["DeltaSink", "IndexSink"]


@runtime_checkable
class DeltaSink(Protocol):
    """Where each step's delta goes (a :class:`~mlflow_amnesia.recording.store.DeltaStore`).

    The Recorder also reads, when the sink has them, ``steps`` (to refuse a ``start_step`` that
    is not after them), ``layout`` (to check it fits the model), ``codec`` (to quantise as the
    store encodes) and ``url`` (to name it in errors).
    """

    def append(self, step: int, delta: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> None:
        """Take one step's delta (float32 arrays by name); may return before it is written."""

    def flush(self) -> None:
        """Return once every appended step is durable."""


@runtime_checkable
class IndexSink(Protocol):
    """Where each step's batch goes (a :class:`~mlflow_amnesia.recording.index.RecordIndexBuilder`)."""

    @property
    def key_id(self) -> str:
        """The public id of the record key the batches are hashed with."""

    def add(self, step: int, ids: Sequence[str]) -> None:
        """Record that ``step`` saw the records ``ids``."""

    def add_hashes(self, step: int, hashes: np.ndarray) -> None:
        """Like :meth:`add` with the ids' keyed hashes (gathered from every rank)."""

    def hash(self, ids: Sequence[str]) -> np.ndarray:
        """The keyed hashes of ``ids`` (nothing is added)."""
