"""Unlearning methods, by name: ``amnesiac`` (rollback of recorded steps, optional repair)."""

from .base import ForgetContext, MethodResult, UnlearningMethod, available_methods, get_method, register_method
from . import amnesiac as _amnesiac  # noqa: F401  (registers the method)

__all__ = ["ForgetContext", "MethodResult", "UnlearningMethod", "available_methods", "get_method", "register_method"]
