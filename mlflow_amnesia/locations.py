"""``mlflow_amnesia.locations``: kept as an import path; the code lives in :mod:`mlflow_amnesia.mlflow.runs`."""

from mlflow_amnesia.mlflow.runs import (  # noqa: F401 - re-exported
    load_array,
    load_state,
    log_params_once,
    phase_base,
    read_bytes,
    save_array,
    save_state,
    start_run,
    write_bytes,
)

__all__ = [
    "load_array",
    "load_state",
    "log_params_once",
    "phase_base",
    "read_bytes",
    "save_array",
    "save_state",
    "start_run",
    "write_bytes",
]
