"""``mlflow_amnesia.store.delta_store``: kept as an import path; the code lives in :mod:`mlflow_amnesia.recording.store.delta_store`."""

from mlflow_amnesia.recording.store.delta_store import (  # noqa: F401 - re-exported
    DeltaStore,
    FORMAT,
    FORMAT_VERSION,
    PurgedStepsError,
    StoreProblem,
    StoreSize,
    StoreStats,
    TensorSpec,
    UnknownStepsError,
)
from mlflow_amnesia.recording.fs import url_to_fs  # noqa: F401 - re-exported

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
