"""Compressed, chunked, crash-safe storage of per-step state deltas.

``DeltaStore`` (append, read, sum, verify, purge) on any fsspec URL, and the codecs
``f32`` (lossless), ``bf16``, ``int8`` and the plain ``zstd`` baseline.
"""

from mlflow_amnesia.recording.store.codecs import CODEC_NAMES, DEFAULT_CODEC, Codec, get_codec
from mlflow_amnesia.recording.store.delta_store import (
    FORMAT_VERSION,
    DeltaStore,
    PurgedStepsError,
    StoreProblem,
    StoreSize,
    StoreStats,
    TensorSpec,
    UnknownStepsError,
)

__all__ = [
    "CODEC_NAMES",
    "DEFAULT_CODEC",
    "FORMAT_VERSION",
    "Codec",
    "DeltaStore",
    "PurgedStepsError",
    "StoreProblem",
    "StoreSize",
    "StoreStats",
    "TensorSpec",
    "UnknownStepsError",
    "get_codec",
]
