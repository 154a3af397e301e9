"""``mlflow_amnesia.concurrency``: kept as an import path; the code lives in :mod:`mlflow_amnesia.mlflow.concurrency`."""

from mlflow_amnesia.mlflow.concurrency import (  # noqa: F401 - re-exported
    LOCK_DIR_ENV,
    F,
    check_forkable,
    children_of,
    lock_dir,
    lock_path,
    model_lock,
    one_forget_per_model,
    register_child,
)

__all__ = [
    "check_forkable",
    "children_of",
    "F",
    "lock_dir",
    "LOCK_DIR_ENV",
    "lock_path",
    "model_lock",
    "one_forget_per_model",
    "register_child",
]
