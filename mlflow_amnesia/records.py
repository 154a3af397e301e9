"""``mlflow_amnesia.records``: kept as an import path; the code lives in :mod:`mlflow_amnesia.jobs.records`."""

from mlflow_amnesia.jobs.records import (  # noqa: F401 - re-exported
    list_records,
)

__all__ = [
    "list_records",
]
