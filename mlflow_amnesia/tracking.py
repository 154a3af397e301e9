"""``mlflow_amnesia.tracking``: kept as an import path; the code lives in :mod:`mlflow_amnesia.mlflow.tracking`."""

from mlflow_amnesia.mlflow.tracking import (  # noqa: F401 - re-exported
    DEFAULT_PROBE_TIMEOUT,
    PROBE_TIMEOUT_ENV,
    SQLITE_HEADER,
    check_reachable,
    check_tracking_store,
    create_sqlite_database,
    sqlite_path,
    sqlite_problem,
)

__all__ = [
    "check_reachable",
    "check_tracking_store",
    "create_sqlite_database",
    "DEFAULT_PROBE_TIMEOUT",
    "PROBE_TIMEOUT_ENV",
    "SQLITE_HEADER",
    "sqlite_path",
    "sqlite_problem",
]
