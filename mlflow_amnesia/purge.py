"""``mlflow_amnesia.purge``: kept as an import path; the code lives in :mod:`mlflow_amnesia.jobs.purge`."""

from mlflow_amnesia.jobs.purge import (  # noqa: F401 - re-exported
    KEEP,
    TAG_PURGE_STARTED,
    TAG_PURGED,
    PurgePlan,
    PurgeResult,
    StorePurge,
    VersionPurge,
    plan_purge,
    purge,
)

__all__ = [
    "KEEP",
    "plan_purge",
    "purge",
    "PurgePlan",
    "PurgeResult",
    "StorePurge",
    "TAG_PURGE_STARTED",
    "TAG_PURGED",
    "VersionPurge",
]
