"""``mlflow_amnesia.store``: kept as an import path; the code lives in :mod:`mlflow_amnesia.recording.store`."""

from mlflow_amnesia.recording.store import (  # noqa: F401 - re-exported
    CODEC_NAMES,
    DEFAULT_CODEC,
    FORMAT_VERSION,
    Codec,
    DeltaStore,
    PurgedStepsError,
    StoreProblem,
    StoreSize,
    StoreStats,
    TensorSpec,
    UnknownStepsError,
    get_codec,
)

__all__ = [
    "Codec",
    "CODEC_NAMES",
    "DEFAULT_CODEC",
    "DeltaStore",
    "FORMAT_VERSION",
    "get_codec",
    "PurgedStepsError",
    "StoreProblem",
    "StoreSize",
    "StoreStats",
    "TensorSpec",
    "UnknownStepsError",
]
