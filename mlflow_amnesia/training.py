"""``mlflow_amnesia.training``: kept as an import path; the code lives in :mod:`mlflow_amnesia.learning.training`."""

from mlflow_amnesia.learning.training import (  # noqa: F401 - re-exported
    EpochResult,
    Recipe,
    epoch_orders,
    evaluate,
    make_optimizer,
    record_phase,
    run_epochs,
)

__all__ = [
    "epoch_orders",
    "EpochResult",
    "evaluate",
    "make_optimizer",
    "Recipe",
    "record_phase",
    "run_epochs",
]
