"""Unlearning methods, by name: ``amnesiac`` (rollback of recorded steps; repair ``finetune`` or
``replay``), ``relabel`` (the paper's "Unlearning"), ``finetune`` (the paper's "naive
retraining") and ``retrain`` (from the initial weights without the records: the reference)."""

from . import amnesiac as _amnesiac  # noqa: F401  (each import registers its method)
from . import finetune as _finetune  # noqa: F401
from . import relabel as _relabel  # noqa: F401
from . import retrain as _retrain  # noqa: F401
from .base import (
    METHODS,
    REPAIRS,
    AllOptions,
    ForgetContext,
    MethodOptions,
    MethodResult,
    Repair,
    RepairResult,
    UnlearningMethod,
    available_methods,
    check_repair,
    get_method,
    register_method,
)

__all__ = [
    "METHODS",
    "REPAIRS",
    "AllOptions",
    "ForgetContext",
    "MethodOptions",
    "MethodResult",
    "Repair",
    "RepairResult",
    "UnlearningMethod",
    "available_methods",
    "check_repair",
    "get_method",
    "register_method",
]
