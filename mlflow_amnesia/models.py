"""``mlflow_amnesia.models``: kept as an import path; the code lives in :mod:`mlflow_amnesia.learning.models`."""

from mlflow_amnesia.learning.models import (  # noqa: F401 - re-exported
    ALLOWED_BUILDERS_ENV,
    ARCHITECTURES,
    ARCHS,
    ENTRY_POINT_GROUP,
    ArchKind,
    SmallCNN,
    allowed_builders,
    build_model,
    check_builder,
    default_arch_spec,
    validate_spec,
)

__all__ = [
    "allowed_builders",
    "ALLOWED_BUILDERS_ENV",
    "ARCHITECTURES",
    "ArchKind",
    "ARCHS",
    "build_model",
    "check_builder",
    "default_arch_spec",
    "ENTRY_POINT_GROUP",
    "SmallCNN",
    "validate_spec",
]
