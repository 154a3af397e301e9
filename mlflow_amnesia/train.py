"""``mlflow_amnesia.train``: kept as an import path; the code lives in :mod:`mlflow_amnesia.jobs.train`."""

from mlflow_amnesia.jobs.train import (  # noqa: F401 - re-exported
    TrainResult,
    default_model_name,
    describe_training,
    open_records,
    train,
)

__all__ = [
    "default_model_name",
    "describe_training",
    "open_records",
    "train",
    "TrainResult",
]
