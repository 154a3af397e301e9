"""``mlflow_amnesia.recorder``: kept as an import path; the code lives in :mod:`mlflow_amnesia.recording.recorder`."""

from mlflow_amnesia.recording.recorder import (  # noqa: F401 - re-exported
    DeltaSink,
    IndexSink,
    Recorder,
    float_state,
    integer_state_names,
    optimizer_meta,
    state_layout,
    step_meta,
    unwrap,
)

__all__ = [
    "DeltaSink",
    "float_state",
    "IndexSink",
    "integer_state_names",
    "optimizer_meta",
    "Recorder",
    "state_layout",
    "step_meta",
    "unwrap",
]
