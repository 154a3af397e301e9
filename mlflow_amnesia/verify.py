"""``mlflow_amnesia.verify``: kept as an import path; the code lives in :mod:`mlflow_amnesia.jobs.verify`."""

from mlflow_amnesia.jobs.verify import (  # noqa: F401 - re-exported
    SegmentCheck,
    VerifyReport,
    verify_version,
)

__all__ = [
    "SegmentCheck",
    "verify_version",
    "VerifyReport",
]
