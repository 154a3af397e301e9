"""``mlflow_amnesia.index``: kept as an import path; the code lives in :mod:`mlflow_amnesia.recording.index`."""

from mlflow_amnesia.recording.index import (  # noqa: F401 - re-exported
    FORMAT_NAME,
    FORMAT_VERSION,
    MAGIC,
    RecordIndex,
    RecordIndexBuilder,
    _decode_arrays,
    _read_header,
    index_counts,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "index_counts",
    "MAGIC",
    "RecordIndex",
    "RecordIndexBuilder",
]
