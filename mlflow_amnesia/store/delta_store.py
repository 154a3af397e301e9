"""``mlflow_amnesia.store.delta_store``: kept as an import path; the code lives in :mod:`mlflow_amnesia.recording.store.delta_store`."""

from mlflow_amnesia.recording.fs import url_to_fs  # noqa: F401 - re-exported
from mlflow_amnesia.recording.store.delta_store import (  # noqa: F401 - re-exported
    FORMAT,
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
    "DeltaStore",
    "FORMAT",
    "FORMAT_VERSION",
    "PurgedStepsError",
    "StoreProblem",
    "StoreSize",
    "StoreStats",
    "TensorSpec",
    "UnknownStepsError",
    "url_to_fs",
]
